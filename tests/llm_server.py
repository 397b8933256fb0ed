"""Test helpers for code that talks to models: a tiny model dir, and a real OpenAI-compatible server.

    from tests.llm_server import build_test_model, serve_openai

    model_dir = build_test_model(tmp_path_factory.getbasetemp())      # built once per session
    with serve_openai(model_dir=model_dir) as url:                     # "http://127.0.0.1:PORT/v1"
        backend = make_backend(url)
    with serve_openai(responder=lambda messages, body: "<answer>B cell</answer>", fail_first=[429, 500]) as url:
        ...; url.requests                                              # what the server received

The server is FastAPI + uvicorn in a background thread, bound to 127.0.0.1 on a free port,
speaking `/v1/models`, `/v1/chat/completions` and `/health`, over real loopback HTTP (no mock
of the HTTP layer). It answers from a tiny model (through `TransformersBackend`) or from a
scripted responder, and can fail on purpose: `fail_first` statuses for the first requests,
`fail_always` for every one, `delay_s` before answering (timeouts), `api_key` to require a
bearer token. Startup and shutdown are bounded (a few seconds).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import FastAPI, Request  # module level: FastAPI resolves the string annotations here
from fastapi.responses import JSONResponse

# (messages, request body) -> one completion, or a list of them (one per choice)
Responder = Callable[[list[dict], dict], "str | list[str]"]


def build_test_model(root: str | Path, **cfg) -> Path:
    """A tiny model under `root/tiny-model`, built on first use and reused after.

    Pass a session-wide directory (`tmp_path_factory.getbasetemp()`), so that several conftest
    files sharing this helper still build the model once per session. Weights use init_std 0.2
    (not Qwen's 0.02), so greedy output visibly depends on the prompt; `cfg` overrides
    TinyModelConfig fields (a different `cfg` needs a different `root`).
    """
    from cello.config import TinyModelConfig
    from cello.llm.tiny import build_tiny_model

    out = Path(root) / "tiny-model"
    if not (out / "config.json").exists():
        build_tiny_model(out, cfg=TinyModelConfig(**{"init_std": 0.2, **cfg}))
    return out


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: dict | None


class ServedURL(str):
    """The server's base URL (e.g. http://127.0.0.1:PORT/v1), plus what the server received."""

    requests: list[RecordedRequest]

    @property
    def chat_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path.endswith("/chat/completions")]


@dataclass
class _State:
    responder: Responder
    fail_first: list[int]
    fail_always: int | None
    retry_after: str | None
    delay_s: float
    api_key: str | None
    honour_n: bool
    model_name: str
    requests: list[RecordedRequest] = field(default_factory=list)
    chat_count: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def echo_responder(messages: list[dict], body: dict) -> str:
    """The default scripted answer: the last message's content, echoed."""
    return "echo: " + messages[-1]["content"]


def model_responder(model_dir: str | Path) -> Callable[[list[dict], dict], tuple[list[str], list[str], int, int]]:
    """Answers from a model dir through TransformersBackend (one generation at a time)."""
    from cello.config import SamplingParams
    from cello.llm.hf import TransformersBackend

    backend = TransformersBackend(model_dir, batch_size=1, device="cpu")
    lock = threading.Lock()

    def respond(messages: list[dict], body: dict):
        stop = body.get("stop") or []
        params = SamplingParams(
            max_new_tokens=int(body.get("max_tokens") or body.get("max_completion_tokens") or 16),
            temperature=float(body.get("temperature", 1.0)),
            top_p=float(body.get("top_p", 1.0)),
            n=int(body.get("n", 1)),
            seed=body.get("seed"),
            stop=[stop] if isinstance(stop, str) else list(stop),
        )
        with lock:
            g = backend.generate_full([messages], params)[0]
        return g.texts, g.finish_reasons, g.prompt_tokens or 0, g.completion_tokens or 0

    respond.is_model = True  # type: ignore[attr-defined]
    return respond


def _make_app(state: _State, prefix: str) -> FastAPI:
    app = FastAPI()

    def record(request: Request, body: dict | None) -> None:
        with state.lock:
            state.requests.append(RecordedRequest(request.method, request.url.path, dict(request.headers), body))

    def auth_error(request: Request) -> JSONResponse | None:
        if state.api_key and request.headers.get("authorization") != f"Bearer {state.api_key}":
            return JSONResponse({"error": {"message": "invalid API key", "code": 401}}, status_code=401)
        return None

    @app.get("/health")
    @app.get("/health/")
    async def health():
        return {"status": "ok"}

    @app.get(f"{prefix}/models")
    async def models(request: Request):
        record(request, None)
        if (err := auth_error(request)) is not None:
            return err
        return {"object": "list", "data": [{"id": state.model_name, "object": "model", "owned_by": "cello-tests"}]}

    @app.post(f"{prefix}/chat/completions")
    async def chat(request: Request):
        try:
            body = await request.json()
        except ValueError:
            body = None
        record(request, body)
        with state.lock:
            k = state.chat_count
            state.chat_count += 1
        if state.delay_s:
            await asyncio.sleep(state.delay_s)
        status = state.fail_always or (state.fail_first[k] if k < len(state.fail_first) else None)
        if status:
            headers = {"Retry-After": state.retry_after} if state.retry_after is not None else {}
            error = {"message": f"scripted failure {status} (request {k})", "code": status}
            return JSONResponse({"error": error}, status_code=status, headers=headers)
        if (err := auth_error(request)) is not None:
            return err
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            return JSONResponse({"error": {"message": "body needs a 'messages' list"}}, status_code=400)
        if body.get("model") not in (None, state.model_name):
            return JSONResponse({"error": {"message": f"The model `{body['model']}` does not exist."}}, status_code=404)
        n = int(body.get("n", 1)) if state.honour_n else 1
        if getattr(state.responder, "is_model", False):
            texts, reasons, p_tok, c_tok = await asyncio.to_thread(state.responder, body["messages"], {**body, "n": n})
        else:
            out = await asyncio.to_thread(state.responder, body["messages"], body)
            texts = [out] * n if isinstance(out, str) else list(out)[:n]
            reasons = ["stop"] * len(texts)
            p_tok = sum(len(str(m.get("content", "")).split()) for m in body["messages"])
            c_tok = sum(len(t.split()) for t in texts)
        return {
            "id": f"chatcmpl-{k}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": state.model_name,
            "choices": [
                {"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": r}
                for i, (t, r) in enumerate(zip(texts, reasons, strict=True))
            ],
            "usage": {"prompt_tokens": p_tok, "completion_tokens": c_tok, "total_tokens": p_tok + c_tok},
        }

    return app


@contextlib.contextmanager
def serve_openai(
    model_dir: str | Path | None = None,
    *,
    responder: Responder | None = None,
    model_name: str = "tiny",
    fail_first: Sequence[int] = (),
    fail_always: int | None = None,
    retry_after: float | str | None = None,
    delay_s: float = 0.0,
    api_key: str | None = None,
    honour_n: bool = True,
    prefix: str = "/v1",
    startup_timeout_s: float = 15.0,
) -> Iterator[ServedURL]:
    """Run an OpenAI-compatible server on 127.0.0.1:<free port>; yield its base URL (…/v1).

    Answers come from `model_dir` (a tiny model) or `responder` (scripted), else an echo.
    `fail_first=[429, 500]`: the first two chat requests get those statuses; `fail_always`:
    every chat request does; `retry_after` is sent as Retry-After on failures; `delay_s` waits
    before answering; `api_key` requires `Authorization: Bearer <key>`; `honour_n=False`
    answers one choice whatever n asks; `prefix="/openai/v1"` mimics KServe's route.
    """
    import uvicorn

    if model_dir is not None and responder is not None:
        msg = "give model_dir or responder, not both"
        raise ValueError(msg)
    respond = model_responder(model_dir) if model_dir is not None else (responder or echo_responder)
    state = _State(
        responder=respond, fail_first=list(fail_first), fail_always=fail_always,
        retry_after=None if retry_after is None else str(retry_after), delay_s=delay_s,
        api_key=api_key, honour_n=honour_n, model_name=model_name,
    )
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        _make_app(state, prefix), log_level="warning", lifespan="off", timeout_graceful_shutdown=2, access_log=False
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name=f"openai-test-{port}", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + startup_timeout_s
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                msg = f"test OpenAI server on port {port} did not start within {startup_timeout_s} s"
                raise RuntimeError(msg)
            time.sleep(0.01)
        url = ServedURL(f"http://127.0.0.1:{port}{prefix}")
        url.requests = state.requests
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
