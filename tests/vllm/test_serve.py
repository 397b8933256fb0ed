"""`cello serve` as the KServe transformer in front of a real vLLM predictor (`--model URL/v1`).

- v1 :predict and v2 /infer: the transformer renders the prompt, vLLM completes it, and the
  completion passed back is exactly what vLLM answers the same prompt directly;
- the OpenAI route: the transformer has none (404), clients use the predictor's;
- a prompt longer than vLLM's context: vLLM's 400 and its reason reach the client;
- auth: the transformer forwards $OPENAI_API_KEY to vLLM; without it vLLM refuses (401) and the
  transformer reports itself not ready (503) instead of answering;
- the upstream dying mid-run: a loopback TCP relay stands between the transformer and vLLM (one
  vLLM per session; restarting it costs ~45 s) and drops every connection, the request in
  flight included, then refuses new ones: 503 "unavailable", not ready; when the relay comes
  back on the same port the transformer answers again.
"""

from __future__ import annotations

import json
import socket
import threading
import time

import httpx
import pytest

from cello.config import SamplingParams, ServeConfig
from cello.data.prompt import PromptTemplate
from cello.llm import make_backend
from cello.serve.schema import parse_puzzles
from tests.serve.conftest import Server, puzzle
from tests.vllm.conftest import TOKEN

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

MAX_NEW = 16


class Relay:
    """127.0.0.1:port -> 127.0.0.1:target, byte for byte. `die_on_next_request()` makes the next
    request that reaches it close every connection and the listener, as a crashed upstream does."""

    def __init__(self, target: int, port: int = 0) -> None:
        self.target, self.port = target, port
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()
        self._die = threading.Event()
        self.died = threading.Event()

    def start(self) -> Relay:
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", self.port))
        self.port = self._listener.getsockname()[1]
        self._listener.listen(64)
        self._die.clear()
        self.died.clear()
        threading.Thread(target=self._accept, args=(self._listener,), daemon=True).start()
        return self

    def die_on_next_request(self) -> None:
        self._die.set()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target))
            except OSError:  # the target is down too: refuse this one
                client.close()
                continue
            with self._lock:
                self._socks += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, from_client: bool) -> None:
        try:
            while data := src.recv(65536):
                if from_client and self._die.is_set() and b"POST " in data:
                    self.stop()
                    self.died.set()
                    return
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def stop(self) -> None:
        self._listener.close()
        with self._lock:
            socks, self._socks = self._socks, []
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()


@pytest.fixture(scope="module")
def transformer(vllm, tmp_path_factory):
    """`cello serve --model <vLLM>/v1` with the token in its environment."""
    server = Server("transformer-vllm", ["--model", vllm.url, "--max-new-tokens", str(MAX_NEW)],
                    log_dir=tmp_path_factory.mktemp("transformer-vllm"), env={"OPENAI_API_KEY": TOKEN})
    server.wait_ready()
    yield server
    server.stop()


def _direct(vllm, p: dict) -> str:
    """What vLLM answers the transformer's prompt for puzzle `p`, asked directly."""
    (parsed,) = parse_puzzles([p], limits=ServeConfig())  # the transformer's own reading of the puzzle
    messages = PromptTemplate().messages(parsed.context, parsed.cell_genes, parsed.candidates)
    with make_backend(f"openai:{vllm.name}@{vllm.url}", api_key_env="CELLO_VLLM_TOKEN", max_retries=0) as b:
        return b.generate([messages], SamplingParams(max_new_tokens=MAX_NEW, temperature=0.0))[0][0]


def test_v1_passes_vllms_completion_through_and_checks_it(transformer, vllm, monkeypatch):
    monkeypatch.setenv("CELLO_VLLM_TOKEN", TOKEN)
    p = puzzle(1)
    r = httpx.post(f"{transformer.url}/v1/models/cello:predict", json={"instances": [p]}, timeout=60)
    assert r.status_code == 200, r.text
    (result,) = r.json()["predictions"]
    assert result["completion"] == _direct(vllm, p)  # greedy: the same prompt, the same answer
    assert result["finish_reason"] in ("stop", "length") and result["latency_ms"] > 0
    # a random model writes no valid answer; repair still assigns each candidate to one cell
    assert result["valid"] is False and result["reason"]
    assert sorted(result["assignment"].values()) == sorted(p["candidates"])


def test_v2_infer_and_readiness(transformer):
    assert httpx.get(f"{transformer.url}/v2/health/ready", timeout=10).status_code == 200
    assert httpx.get(f"{transformer.url}/v1/models/cello", timeout=10).status_code == 200
    body = {"inputs": [{"name": "puzzles", "datatype": "BYTES", "shape": [2],
                        "data": [json.dumps(puzzle(2)), json.dumps(puzzle(3))]}]}
    r = httpx.post(f"{transformer.url}/v2/models/cello/infer", json=body, timeout=60)
    assert r.status_code == 200, r.text
    out = [json.loads(x) for x in r.json()["outputs"][0]["data"]]
    assert [o["id"] for o in out] == ["p2", "p3"] and all(o["completion"] for o in out)


def test_the_openai_route_is_the_predictors(transformer, vllm):
    body = {"model": "cello", "messages": [{"role": "user", "content": "x"}]}
    assert httpx.post(f"{transformer.url}/openai/v1/chat/completions", json=body, timeout=10).status_code == 404
    r = httpx.post(f"{vllm.url}/chat/completions", json={**body, "model": vllm.name, "max_tokens": 2},
                   headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] <= 2


def test_a_prompt_longer_than_vllms_context_is_a_400(transformer):
    """The transformer counts no tokens (it has no tokenizer); vLLM refuses, the client gets its reason."""
    cells = [[f"QX{i}Z{j}W" for j in range(120)] for i in range(24)]
    big = puzzle(9, cells=cells, candidates=[f"type {i}" for i in range(24)])
    r = httpx.post(f"{transformer.url}/v1/models/cello:predict", json={"instances": [big]}, timeout=60)
    assert r.status_code == 400, r.text
    assert "maximum context length" in r.json()["error"]


def test_without_the_token_vllm_refuses_and_the_transformer_is_not_ready(vllm, tmp_path):
    server = Server("transformer-no-token", ["--model", vllm.url, "--max-new-tokens", str(MAX_NEW)], log_dir=tmp_path)
    try:
        server.wait_ready("/v2/health/live")
        assert httpx.get(f"{server.url}/v1/models/cello", timeout=10).status_code == 503
        r = httpx.post(f"{server.url}/v1/models/cello:predict", json={"instances": [puzzle(0)]}, timeout=60)
        assert r.status_code == 503, r.text
    finally:
        server.stop()


def test_upstream_dying_mid_run_gives_503_then_recovers(vllm, tmp_path):
    relay = Relay(vllm.port).start()
    server = Server("transformer-relay", ["--model", f"http://127.0.0.1:{relay.port}/v1", "--max-new-tokens",
                                          str(MAX_NEW)], log_dir=tmp_path, env={"OPENAI_API_KEY": TOKEN})
    url = f"{server.url}/v1/models/cello:predict"
    try:
        server.wait_ready()
        assert httpx.post(url, json={"instances": [puzzle(0)]}, timeout=60).status_code == 200
        relay.die_on_next_request()
        r = httpx.post(url, json={"instances": [puzzle(4)]}, timeout=60)  # in flight when the upstream dies
        assert relay.died.is_set()
        assert r.status_code == 503 and "unavailable" in r.json()["error"], r.text
        assert httpx.post(url, json={"instances": [puzzle(5)]}, timeout=60).status_code == 503
        time.sleep(1.2)  # the upstream's readiness is cached for 1 s
        assert httpx.get(f"{server.url}/v1/models/cello", timeout=10).status_code == 503
        assert httpx.get(f"{server.url}/v2/health/live", timeout=10).status_code == 200
        relay.start()  # the upstream is back on the same port
        time.sleep(1.2)
        assert httpx.get(f"{server.url}/v1/models/cello", timeout=10).status_code == 200
        r = httpx.post(url, json={"instances": [puzzle(6)]}, timeout=60)
        assert r.status_code == 200, r.text
    finally:
        server.stop()
        relay.stop()
