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

Status codes (one table, cello.serve.errors): 400 bad input (the message names the puzzle and
field), 401 auth, 404 unknown model or route, 405 wrong method, 408 slow client, 413 body too
large, 429 queue full (retry), 503 not ready / draining / upstream unreachable (Retry-After),
504 generation timeout (serve.timeout_s).

SIGTERM (or SIGINT) drains (cello.serve.shutdown): readiness turns false and new work gets 503
at once, queued work is generated for up to serve.drain_s minus a margin, what is left gets a
JSON 503 with Retry-After, and the process exits 0 inside serve.drain_s (under Kubernetes' 30 s).
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
from cello.serve.auth import TokenSource
from cello.serve.errors import RequestError, ServeError, UpstreamRefused, UpstreamUnavailable, error_response
from cello.serve.middleware import Guard, Traffic

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
    """Wraps the OpenAI HTTP backend: a 4xx from the upstream is UpstreamRefused (400), any other
    failure UpstreamUnavailable (503)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def generate_full(self, conversations, params):
        try:
            return self.inner.generate_full(conversations, params)
        except UnicodeError as exc:  # text the HTTP client cannot encode (the schema refuses it first)
            msg = f"the model server refused the request: the prompt is not valid Unicode ({type(exc).__name__})"
            raise UpstreamRefused(msg) from None
        except CelloError as exc:
            status = getattr(exc, "status_code", None)  # set by cello.errors.UpstreamError
            if status is not None and 400 <= status < 500:
                msg = f"the model server refused the request: {exc}"
                raise UpstreamRefused(msg) from None
            msg = f"the model server is unavailable: {exc}"
            raise UpstreamUnavailable(msg) from None

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
    # Unseeded: a seed shared by every request would make each sampled request run alone (see cello.serve.engine);
    # an OpenAI request that wants reproducible sampling sends its own seed.
    sampling = generation.sampling.model_copy(
        update={"max_new_tokens": cfg.max_new_tokens, "temperature": cfg.temperature, "seed": None})
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

        return make_model(cfg.model_name, backend_factory=in_process, cfg=cfg, prompt=prompt, sampling=sampling,
                          workers=1)
    # Upstream: fail fast (the client waits), a few HTTP requests in flight per batch.
    backend_cfg = override(
        generation.backend,
        spec=url,
        model=upstream_model,
        max_retries=min(generation.backend.max_retries, 2),
        timeout_s=min(generation.backend.timeout_s, cfg.timeout_s),
    )
    return make_model(
        cfg.model_name,
        backend_factory=lambda: _UpstreamBackend(make_backend(backend_cfg)),
        cfg=cfg,
        prompt=prompt,
        sampling=sampling,
        workers=4,
        health=_health_probe(url, api_key_env=backend_cfg.api_key_env),
    )


def install(app: Any, model: Any, *, cfg: ServeConfig, openai_routes: bool, traffic: Traffic | None = None) -> None:
    """Add Cello's middleware, error handlers and routes (OpenAI's when in process) to KServe's app."""
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException

    async def served_error(request, exc: ServeError):
        return error_response(request.url.path, exc)

    async def bad_request(request, exc: RequestValidationError):
        problems = []
        for err in exc.errors()[:5]:
            loc = ".".join(str(p) for p in err.get("loc", ()))
            problems.append(f"{loc}: {err.get('msg', 'invalid')}")
        return error_response(request.url.path, RequestError("invalid request: " + "; ".join(problems)))

    async def http_error(request, exc: HTTPException):  # Starlette's own 404/405 for unknown routes
        detail = exc.detail if isinstance(exc.detail, str) else "error"
        message = f"{request.method} {request.url.path[:100]}: {detail}"
        return error_response(request.url.path, ServeError(message), status=exc.status_code)

    app.add_exception_handler(ServeError, served_error)
    app.add_exception_handler(RequestValidationError, bad_request)
    app.add_exception_handler(HTTPException, http_error)
    tokens = TokenSource(env=cfg.auth_token_env, file=cfg.auth_token_file)
    app.add_middleware(
        Guard,
        max_body_bytes=cfg.max_body_bytes,
        tokens=tokens,
        read_timeout_s=cfg.read_timeout_s,
        traffic=traffic,
    )
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

    cello_model = build_model(
        model,
        cfg=cfg,
        prompt=prompt,
        generation=generation,
        predictor_host=predictor_host,
        upstream_model=upstream_model,
    )
    cello_model.load()
    upstream = upstream_url(model, predictor_host) is not None
    traffic = Traffic()
    install(model_server.app, cello_model, cfg=cfg, openai_routes=not upstream, traffic=traffic)
    auth = "on" if TokenSource(env=cfg.auth_token_env, file=cfg.auth_token_file).required else "off"
    log.info(
        "serving %r (%s) on port %d; auth %s; gRPC off; drain %g s",
        cfg.model_name,
        upstream_url(model, predictor_host) or model,
        cfg.port,
        auth,
        cfg.drain_s,
    )
    _configure_rest(cfg, traffic=traffic, begin_drain=cello_model.begin_drain)
    server = kserve.ModelServer(
        http_port=cfg.port, enable_grpc=False, workers=1, enable_docs_url=False, grace_period=cfg.drain_s
    )
    server.start([cello_model])
    _exit_now()


def _exit_now() -> None:
    """Exit 0 at once once the server has stopped: tearing down an interpreter that holds torch,
    transformers and kserve takes seconds (measured: about 5 s on a busy 2-core machine), which
    the drain period cannot spare. Every response is sent and the model is unloaded by now."""
    import os

    log.info("stopped")
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _configure_rest(cfg: ServeConfig, *, traffic: Traffic, begin_drain) -> None:
    """Settings KServe's REST server does not expose: the bind address, the header read timeout,
    and the drain on SIGTERM/SIGINT (cello.serve.shutdown)."""
    from kserve.protocol.rest import server as rest

    from cello.serve import shutdown
    from cello.serve.protocol import with_header_timeout

    original = rest.RESTServer.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self.config.host = cfg.host  # the uvicorn.Server holds this same Config object
        self.config.http = with_header_timeout(cfg.read_timeout_s)
        shutdown.install(self._server, drain_s=cfg.drain_s, traffic=traffic, begin_drain=begin_drain)

    rest.RESTServer.__init__ = init
