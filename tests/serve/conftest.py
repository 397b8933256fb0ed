"""Real `cello serve` processes on free loopback ports, started once per session, stopped by PID.

- `server`: the tiny model in process, bearer-token auth from a mounted-style token file;
- `transformer`: `cello serve` in upstream mode (no auth of its own) in front of a real
  OpenAI-compatible server on loopback with the same tiny model (`tests.llm_server.serve_openai`,
  under /openai/v1 as KServe's predictor, requiring the token the transformer forwards);
- `fake_upstream` + `gateway`: upstream mode against a scripted OpenAI server whose mode can
  change within the session (hang, fail, refuse, or a failing GET /models for readiness),
  started with KServe's own argument spellings (--predictor_host ...).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from tests.conftest import defaults_params, free_port
from tests.llm_server import build_test_model, serve_openai

TOKEN = "test-token-4f1c"
MAX_NEW_TOKENS = 8
REPO = Path(__file__).resolve().parents[2]


class Server:
    """A `cello serve` subprocess; `stop()` sends SIGTERM to its PID and waits."""

    def __init__(self, name: str, args: list[str], *, log_dir: Path, env: dict[str, str] | None = None,
                 params: str | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log_dir / f"{name}.log"
        clean = {k: v for k, v in os.environ.items() if k not in ("CELLO_SERVE_TOKEN", "OPENAI_API_KEY")}
        clean.update({"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **(env or {})})
        cmd = [sys.executable, "-m", "cello.cli", "serve", "--host", "127.0.0.1", "--http_port", str(self.port),
               "--params", params or defaults_params(log_dir), *args]
        self._fh = open(self.log, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, stdout=self._fh, stderr=subprocess.STDOUT, env=clean, cwd=REPO)

    def wait_ready(self, path: str = "/v2/health/ready", timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(self.url + path, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"server not ready after {timeout} s:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._fh.close()
        return self.proc.returncode


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    return build_test_model(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="session")
def fake_upstream():
    """A scripted OpenAI-compatible server: state['mode'] is ok | hang | fail | refuse | down."""
    state = {"mode": "ok", "release": threading.Event(), "requests": []}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep the test output clean
            pass

        def _send(self, status: int, body: dict, headers: dict | None = None) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if state["mode"] == "down":
                self._send(500, {"error": "down"})
            else:
                self._send(200, {"object": "list", "data": [{"id": "fake", "object": "model"}]})

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
            state["requests"].append(body)
            mode = state["mode"]
            if mode == "hang":
                state["release"].wait(15)
                self._send(503, {"error": "released"})
            elif mode == "fail":
                self._send(503, {"error": "overloaded"}, {"Retry-After": "0"})
            elif mode == "refuse":
                self._send(400, {"error": {"message": "prompt is too long for this model"}})
            else:
                labels = body["messages"][-1]["content"].splitlines()[-3:]  # the candidates, in order
                text = f"<think>scripted</think>\n<answer>{' | '.join(labels)}</answer>"
                self._send(
                    200,
                    {
                        "id": "x",
                        "object": "chat.completion",
                        "model": body["model"],
                        "choices": [
                            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
                        ],
                        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
                    },
                )

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    state["port"] = httpd.server_address[1]
    yield state
    state["release"].set()
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="session")
def servers(model_dir, fake_upstream, tmp_path_factory):
    """Start all three servers at once (they load in parallel), yield them, stop them by PID."""
    logs = tmp_path_factory.mktemp("serve-logs")
    token_file = logs / "token"
    token_file.write_text(TOKEN + "\n")
    main = Server(
        "main",
        [
            "--model",
            str(model_dir),
            "--max-new-tokens",
            str(MAX_NEW_TOKENS),
            "--threads",
            "1",
            "--token-file",
            str(token_file),
        ],
        log_dir=logs,
    )
    gateway = Server(
        "gateway",
        [
            "--predictor_host",
            f"127.0.0.1:{fake_upstream['port']}",
            "--model_name",
            "cello",
            "--upstream-model",
            "fake",
            "--timeout-s",
            "2",
            "--max-new-tokens",
            "16",
        ],
        log_dir=logs,
    )
    upstream = serve_openai(model_dir=model_dir, model_name="cello", prefix="/openai/v1", api_key=TOKEN)
    upstream_url = upstream.__enter__()  # the tiny model behind an OpenAI server, as KServe's predictor route
    transformer = Server(
        "transformer",
        ["--model", upstream_url, "--upstream-model", "cello", "--max-new-tokens", str(MAX_NEW_TOKENS)],
        log_dir=logs,
        env={"OPENAI_API_KEY": TOKEN},
    )
    started = [main, gateway, transformer]
    try:
        main.wait_ready("/v1/models/cello")
        gateway.wait_ready("/v1/models/cello")
        transformer.wait_ready("/v1/models/cello")
        yield {"main": main, "transformer": transformer, "gateway": gateway}
    finally:
        codes = {s.log.stem: s.stop() for s in started}
        upstream.__exit__(None, None, None)
    assert all(code == 0 for code in codes.values()), f"servers did not stop cleanly on SIGTERM: {codes}"


@pytest.fixture(scope="session")
def server(servers) -> Server:
    return servers["main"]


@pytest.fixture(scope="session")
def client(server):
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60) as c:
        yield c


def puzzle(i: int = 0, **over) -> dict:
    """A small valid puzzle (3 cells) in the request schema."""
    base = {
        "id": f"p{i}",
        "context": "The cell is from a female donor.",
        "cells": [
            {"id": "c1", "genes": ["MS4A1", "CD79A", "CD19"]},
            {"id": "c2", "expression": {"CD3E": 7.5, "CD4": 3.0, "LYZ": 0.0}},
            ["LYZ", "CD14", "S100A8"],
        ],
        "candidates": ["B cell", "CD4-positive, alpha-beta T cell", "classical monocyte"],
    }
    base.update(over)
    return base
