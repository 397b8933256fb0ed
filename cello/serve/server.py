"""`cello serve`: host a Cello model with KServe's ModelServer.

Two modes, picked by `--model`:
- in process: a model directory (a trained checkpoint or `cello model tiny`), generated with
  transformers on CPU or GPU. Also answers OpenAI-style /openai/v1/chat/completions.
- upstream (the KServe transformer): `--model http://HOST/openai/v1`, or `--predictor_host
  HOST` as KServe passes it, makes this server render prompts, call the vLLM predictor's
  OpenAI route, and parse, check and repair the answers.

    cello serve --model models/tiny --port 8080
    cello serve --model http://cello-predictor.ml/openai/v1 --upstream-model cello
    curl -s localhost:8080/v1/models/cello:predict -d @puzzles.json

Status codes: 400 bad input (the message names the puzzle and field), 401 auth, 404 unknown
model or route, 413 body too large, 429 queue full (retry), 503 not ready / upstream
unreachable, 504 generation timeout (serve.timeout_s). Stop with SIGTERM or SIGINT.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Iterator
from typing import Any

from cello.config import GenerationConfig, ServeConfig, override
from cello.data.prompt import PromptTemplate
from cello.deps import require
from cello.errors import CelloError, ConfigError
from cello.serve.engine import BackendError, GenerationTimeout, QueueFull
from cello.serve.middleware import Guard, TokenSource, error_body

log = logging.getLogger(__name__)


@contextlib.contextmanager
def _plain_argv() -> Iterator[None]:
    """kserve.model_server parses sys.argv when imported; hide Cello's flags from it."""
    saved = sys.argv
    sys.argv = saved[:1]
    try:
        yield
    finally:
        sys.argv = saved


def upstream_url(model: str | None, predictor_host: str | None) -> str | None:
    """The OpenAI base URL of an upstream predictor, or None for an in-process model."""
    if model and model.startswith(("http://", "https://")):
        return model.rstrip("/")
    if predictor_host:
        host = predictor_host.strip().rstrip("/")
        scheme, sep, rest = host.partition("://")
        if sep and scheme.lower() in ("http", "https"):
            return f"{scheme.lower()}://{rest.rstrip('/')}/openai/v1"  # keep the scheme that was given
        return f"http://{host}/openai/v1"
    return None


class _UpstreamBackend:
    """Wraps the OpenAI HTTP backend: upstream failures become BackendError (4xx kept apart)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def generate_full(self, conversations, params):
        try:
            return self.inner.generate_full(conversations, params)
        except UnicodeError as exc:  # text the HTTP client cannot encode (the schema refuses it first)
            msg = f"the model server refused the request: the prompt is not valid Unicode ({type(exc).__name__})"
            raise BackendError(msg) from None
        except CelloError as exc:
            status = getattr(exc, "status_code", None)  # set by cello.errors.UpstreamError
            text = str(exc)
            refused = status is not None and 400 <= status < 500
            raise BackendError(f"the model server refused the request: {text}" if refused else
                               f"the model server is unavailable: {text}", unavailable=not refused,
                               ) from None

    def close(self) -> None:
        self.inner.close()


def _health_probe(base_url: str, *, api_key_env: str, timeout_s: float = 2.0, cache_s: float = 1.0):
    """An async readiness check of the upstream (GET /models), cached for `cache_s`."""
    import os

    import httpx

    state = {"at": 0.0, "ok": False}
    headers = {}
    if os.environ.get(api_key_env):
        headers["Authorization"] = f"Bearer {os.environ[api_key_env]}"
    # One client for the server's life: a new one per probe built an SSL context each time
    # (~0.1-0.2 s of CPU), blocking the event loop about once a second under load.
    clients: list[httpx.AsyncClient] = []

    async def ready() -> bool:
        now = time.monotonic()
        if now - state["at"] < cache_s:
            return state["ok"]
        try:
            if not clients:
                clients.append(httpx.AsyncClient(timeout=timeout_s))
            resp = await clients[0].get(f"{base_url}/models", headers=headers)
            state["ok"] = resp.status_code == 200
        except httpx.HTTPError:
            state["ok"] = False
        state["at"] = now
        return state["ok"]

    return ready


def build_model(
    model: str | None,
    *,
    cfg: ServeConfig,
    prompt: PromptTemplate,
    generation: GenerationConfig,
    predictor_host: str | None = None,
    upstream_model: str | None = None,
):
    """The CelloModel (not yet loaded) for a model dir or an upstream URL."""
    from cello.llm import make_backend
    from cello.serve.model import make_model

    url = upstream_url(model, predictor_host)
    # The server's own defaults (serve.max_new_tokens, serve.temperature); the rest from generation.sampling.
    sampling = generation.sampling.model_copy(update={"max_new_tokens": cfg.max_new_tokens, "temperature": cfg.temperature})
    if url is None:
        if not model:
            msg = "give --model: a model directory, or an upstream http(s)://HOST/openai/v1 (or --predictor_host)."
            raise ConfigError(msg)
        backend_cfg = override(generation.backend, spec=model, batch_size=cfg.max_batch_size)

        def in_process():
            if cfg.cpu_threads:
                import torch

                torch.set_num_threads(cfg.cpu_threads)
            return make_backend(backend_cfg)

        return make_model(cfg.model_name, backend_factory=in_process, cfg=cfg, prompt=prompt, sampling=sampling, workers=1)
    # Upstream: fail fast (the client waits), a few HTTP requests in flight per batch.
    backend_cfg = override(generation.backend, spec=url, model=upstream_model, max_retries=min(generation.backend.max_retries, 2),
                           timeout_s=min(generation.backend.timeout_s, cfg.timeout_s))
    return make_model(cfg.model_name, backend_factory=lambda: _UpstreamBackend(make_backend(backend_cfg)), cfg=cfg,
                      prompt=prompt, sampling=sampling, workers=4,
                      health=_health_probe(url, api_key_env=backend_cfg.api_key_env))


def install(app: Any, model: Any, *, cfg: ServeConfig, openai_routes: bool) -> None:
    """Add Cello's middleware, error handlers and (in-process) OpenAI routes to KServe's app."""
    from fastapi import Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import Response

    def handler(status: int, headers: dict[str, str] | None = None):
        async def handle(request: Request, exc: Exception) -> Response:
            return Response(error_body(request.url.path, status, str(exc)), status_code=status,
                            media_type="application/json", headers=headers)
        return handle

    async def backend_failed(request: Request, exc: BackendError) -> Response:
        status = 503 if exc.unavailable else (400 if "refused the request" in str(exc) else 500)
        return Response(error_body(request.url.path, status, str(exc)), status_code=status, media_type="application/json")

    async def bad_request(request: Request, exc: RequestValidationError) -> Response:
        problems = []
        for err in exc.errors()[:5]:
            loc = ".".join(str(p) for p in err.get("loc", ()))
            problems.append(f"{loc}: {err.get('msg', 'invalid')}")
        message = "invalid request: " + "; ".join(problems)
        return Response(error_body(request.url.path, 400, message), status_code=400, media_type="application/json")

    app.add_exception_handler(QueueFull, handler(429, {"Retry-After": "1"}))
    app.add_exception_handler(GenerationTimeout, handler(504))
    app.add_exception_handler(BackendError, backend_failed)
    app.add_exception_handler(RequestValidationError, bad_request)
    tokens = TokenSource(env=cfg.auth_token_env, file=cfg.auth_token_file)
    app.add_middleware(Guard, max_body_bytes=cfg.max_body_bytes, tokens=tokens)
    from cello.serve.routes import register_inference_routes

    register_inference_routes(app, model)
    if openai_routes:
        from cello.serve.openai import register_openai_routes

        register_openai_routes(app, model)


def serve(
    model: str | None,
    *,
    cfg: ServeConfig,
    prompt: PromptTemplate,
    generation: GenerationConfig,
    predictor_host: str | None = None,
    upstream_model: str | None = None,
) -> None:
    """Load the model and serve until SIGTERM/SIGINT (blocks)."""
    require("kserve", "serve")
    with _plain_argv():
        import kserve
        from kserve import model_server

    cello_model = build_model(model, cfg=cfg, prompt=prompt, generation=generation,
                              predictor_host=predictor_host, upstream_model=upstream_model)
    cello_model.load()
    upstream = upstream_url(model, predictor_host) is not None
    install(model_server.app, cello_model, cfg=cfg, openai_routes=not upstream)
    auth = "on" if TokenSource(env=cfg.auth_token_env, file=cfg.auth_token_file).token() else "off"
    log.info("serving %r (%s) on port %d; auth %s", cfg.model_name,
             upstream_url(model, predictor_host) or model, cfg.port, auth)
    _bind_host(cfg.host)
    server = kserve.ModelServer(http_port=cfg.port, enable_grpc=False, workers=1, enable_docs_url=False)
    server.start([cello_model])


def _bind_host(host: str) -> None:
    """KServe's REST server always binds 0.0.0.0; set uvicorn's host when another is asked for."""
    if host == "0.0.0.0":
        return
    from kserve.protocol.rest import server as rest

    original = rest.RESTServer.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self.config.host = host  # the uvicorn.Server holds this same Config object

    rest.RESTServer.__init__ = init
