"""What every request passes before it reaches a route: auth, a body size limit, metrics.

A pure ASGI middleware (no per-request threads, works for every route, KServe's included):
- bearer-token auth when a token is configured (env var or a mounted Secret file, re-read
  when the file changes); probes and /metrics stay open so Kubernetes and Prometheus work;
- the body is read up to `max_body_bytes`; a larger body (or a lying Content-Length) is
  answered 413 before any JSON parsing;
- `cello_requests_total{route,status}` and `cello_request_seconds{route}` for Prometheus, with
  routes normalised to a few names (no label per model name or per fuzzed path);
- KServe's management routes are not served (404, whatever the method and token): in KServe
  0.21 that is the model repository extension, POST /v2/repository/models/NAME/load|unload,
  which would let any client take the model offline (predictions then fail with 503 while
  /v2/health/ready still says 200). The model is loaded once at startup; a new one means a
  new pod.

Errors are JSON: `{"error": "..."}`, or OpenAI's `{"error": {"message", "type", "code"}}`
under /openai.
"""

from __future__ import annotations

import hmac
import json
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cello.errors import ConfigError

_ROUTES = [
    (re.compile(r"^/v1/models/[^/]+:predict$"), "v1_predict"),
    (re.compile(r"^/v2/models/[^/]+(/versions/[^/]+)?/infer$"), "v2_infer"),
    (re.compile(r"^/openai/v1/chat/completions$"), "openai_chat"),
    (re.compile(r"^/openai/v1/models$"), "openai_models"),
    (re.compile(r"^/metrics$"), "metrics"),
    (re.compile(r"^/$|^/v2/health/(live|ready)$|^/v1/models/[^/:]+$|^/v2/models/[^/]+/ready$"), "health"),
    (re.compile(r"^/v1/models$|^/v2/models(/[^/]+)?$|^/v2$"), "metadata"),
]
# KServe routes that change the server's state (not served): the model repository extension.
_BLOCKED = re.compile(r"^/v2/repository(/|$)")
# Open without a token: liveness/readiness probes (Kubernetes sends no token) and /metrics.
_OPEN = re.compile(r"^/$|^/v2/health/(live|ready)$|^/v1/models/[^/:]+$|^/v2/models/[^/]+/ready$|^/metrics$")

_METRICS: dict[str, Any] = {}


def route_name(path: str) -> str:
    for pattern, name in _ROUTES:
        if pattern.match(path):
            return name
    return "other"


def _metrics() -> dict[str, Any]:
    if not _METRICS:
        from prometheus_client import Counter, Histogram

        _METRICS["requests"] = Counter("cello_requests_total", "HTTP requests by route and status.", ["route", "status"])
        _METRICS["seconds"] = Histogram(
            "cello_request_seconds", "HTTP request latency by route.", ["route"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
        )
    return _METRICS


class TokenSource:
    """The expected bearer token: a file (a mounted Secret, re-read when it changes) or an env var."""

    def __init__(self, *, env: str | None, file: str | os.PathLike | None) -> None:
        self.env = env
        self.file = Path(file) if file else None
        self._mtime: float | None = None
        self._cached: str | None = None
        if self.file is not None and not self.file.is_file():
            msg = f"serve.auth_token_file={self.file} does not exist; mount the Secret there or unset the setting."
            raise ConfigError(msg)
        if self.file is not None and not self.token():
            msg = f"serve.auth_token_file={self.file} is empty; put the token in it."
            raise ConfigError(msg)

    def token(self) -> str | None:
        if self.file is not None:
            try:
                mtime = self.file.stat().st_mtime
                if mtime != self._mtime:
                    self._cached, self._mtime = self.file.read_text(encoding="utf-8").strip(), mtime
            except OSError:
                pass  # keep the last token we read (a Secret update swaps a symlink)
            return self._cached or None
        value = os.environ.get(self.env, "").strip() if self.env else ""
        return value or None


def error_body(path: str, status: int, message: str) -> bytes:
    if path.startswith("/openai/"):
        kind = "invalid_request_error" if status < 500 else "server_error"
        body: dict[str, Any] = {"error": {"message": message, "type": kind, "code": status}}
    else:
        body = {"error": message}
    return json.dumps(body).encode()


class Guard:
    """ASGI middleware: auth, body limit, metrics (see the module docstring)."""

    def __init__(self, app: Callable, *, max_body_bytes: int, tokens: TokenSource | None = None) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.tokens = tokens

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        route = route_name(path)
        start = time.perf_counter()
        status = {"code": 500}

        async def send_and_record(message: dict) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            problem = self._check_auth(scope, path)
            if problem is None and _BLOCKED.match(path):
                problem = 404, f"{path[:100]} is not served: the model is loaded once at startup and cannot be loaded or unloaded over HTTP", []
            if problem is None and scope.get("method") in ("POST", "PUT", "PATCH"):
                problem, receive = await self._buffer(scope, receive)
            if problem is not None:
                code, message, headers = problem
                await _respond(send_and_record, code, error_body(path, code, message), headers)
            else:
                await self.app(scope, receive, send_and_record)
        finally:
            m = _metrics()
            m["requests"].labels(route=route, status=str(status["code"])).inc()
            m["seconds"].labels(route=route).observe(time.perf_counter() - start)

    def _check_auth(self, scope: dict, path: str):
        token = self.tokens.token() if self.tokens else None
        if token is None or (_OPEN.match(path) and scope.get("method") in ("GET", "HEAD")):
            return None
        given = ""
        for key, value in scope.get("headers", []):
            if key == b"authorization":
                given = value.decode("latin-1")
                break
        scheme, _, credential = given.partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(credential.strip().encode(), token.encode()):
            return None
        message = "missing bearer token: send 'Authorization: Bearer <token>'" if not given else "invalid bearer token"
        return 401, message, [(b"www-authenticate", b"Bearer")]

    async def _buffer(self, scope: dict, receive: Callable):
        """Read the whole body (at most the limit) and hand a replay to the app."""
        limit = self.max_body_bytes
        declared = None
        for key, value in scope.get("headers", []):
            if key == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    return (400, f"Content-Length {value[:20]!r} is not a number", []), receive
        too_big = f"the request body is larger than {limit} bytes (serve.max_body_bytes); send fewer puzzles per request"
        if declared is not None and declared > limit:
            return (413, too_big, []), receive
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return (413, too_big, []), receive
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        sent = {"done": False}

        async def replay() -> dict:
            if not sent["done"]:
                sent["done"] = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return None, replay


async def _respond(send: Callable, status: int, body: bytes, headers: list | None = None) -> None:
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *(headers or [])],
    })
    await send({"type": "http.response.body", "body": body})
