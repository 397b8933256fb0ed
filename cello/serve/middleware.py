"""What every request passes before it reaches a route: auth, limits, disconnects, metrics.

A pure ASGI middleware (no per-request threads, works for every route, KServe's included):
- bearer-token auth when a token is configured (cello.serve.auth: fails closed). Liveness and
  readiness probes and /metrics stay open (GET/HEAD only): Kubernetes probes and Prometheus
  send no token, and they reveal nothing but health and counters;
- while the server drains (after SIGTERM) new work and readiness probes are answered 503 with
  Retry-After at once (the listener stays open, so requests already on their way get an answer
  rather than a reset connection); `Traffic.in_flight` tells the drain when the last one is done;
- the body is read up to `max_body_bytes` (a larger body, or a lying Content-Length: 413)
  and within `read_timeout_s` (a slower one: 408), before any JSON parsing;
- a client that disconnects while its request runs cancels the request: its queued work is
  withdrawn and a running generation stops at the next step (as vLLM aborts on disconnect);
- HEAD is answered like GET without a body (FastAPI routes are GET-only);
- `cello_requests_total{route,status}` and `cello_request_seconds{route}` for Prometheus, with
  routes normalised to a few names (no label per model name or per fuzzed path); a request
  whose client left is counted with status 499;
- KServe's management routes are not served (404, whatever the method and token): in KServe
  0.21 that is the model repository extension, POST /v2/repository/models/NAME/load|unload,
  which would let any client take the model offline. The model is loaded once at startup; a
  new one means a new pod.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import re
import time
from collections.abc import Callable
from typing import Any

from cello.serve.auth import TokenSource
from cello.serve.errors import Draining, NotFound, ReadTimeout, RequestError, TooLarge, Unauthorized, send_error

_ROUTES = [
    (re.compile(r"^/v1/models/[^/]+:predict$"), "v1_predict"),
    (re.compile(r"^/v2/models/[^/]+(/versions/[^/]+)?/infer$"), "v2_infer"),
    (re.compile(r"^/openai/v1/chat/completions$"), "openai_chat"),
    (re.compile(r"^/openai/v1/models(/[^/]+)?$"), "openai_models"),
    (re.compile(r"^/metrics$"), "metrics"),
    (re.compile(r"^/$|^/v2/health/(live|ready)$|^/v1/models/[^/:]+$|^/v2/models/[^/]+/ready$"), "health"),
    (re.compile(r"^/v1/models$|^/v2/models(/[^/]+)?$|^/v2$"), "metadata"),
]
# KServe routes that change the server's state (not served): the model repository extension.
_BLOCKED = re.compile(r"^/v2/repository(/|$)")
# Readiness probes: 503 while draining, so Kubernetes stops sending traffic.
_READY = re.compile(r"^/v2/health/ready$|^/v1/models/[^/:]+$|^/v2/models/[^/]+/ready$")
# Open without a token: liveness/readiness probes (Kubernetes sends no token) and /metrics.
_OPEN = re.compile(r"^/$|^/v2/health/(live|ready)$|^/v1/models/[^/:]+$|^/v2/models/[^/]+/ready$|^/metrics$")
CLIENT_GONE = 499  # the status nginx logs for a request whose client closed the connection

_METRICS: dict[str, Any] = {}


def route_name(path: str) -> str:
    for pattern, name in _ROUTES:
        if pattern.match(path):
            return name
    return "other"


def _metrics() -> dict[str, Any]:
    if not _METRICS:
        from prometheus_client import Counter, Histogram

        _METRICS["requests"] = Counter("cello_requests_total", "HTTP requests by route and status.",
                                       ["route", "status"])
        _METRICS["seconds"] = Histogram(
            "cello_request_seconds", "HTTP request latency by route.", ["route"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
        )
    return _METRICS


class Traffic:
    """Shared by the guard and the SIGTERM drain: whether draining started, requests in flight."""

    def __init__(self) -> None:
        self.draining = False
        self.in_flight = 0


class Guard:
    """ASGI middleware: auth, drain, body limits, disconnects, metrics (see the module docstring)."""

    def __init__(self, app: Callable, *, max_body_bytes: int, tokens: TokenSource | None = None,
                 read_timeout_s: float = 30.0, traffic: Traffic | None = None) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.tokens = tokens
        self.read_timeout_s = read_timeout_s
        self.traffic = traffic or Traffic()

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        route = route_name(path)
        start = time.perf_counter()
        head = scope.get("method") == "HEAD"
        if head:
            scope = {**scope, "method": "GET"}
        status = {"code": 500, "done": False}
        self.traffic.in_flight += 1

        async def send_and_record(message: dict) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            elif message["type"] == "http.response.body":
                status["done"] = not message.get("more_body", False)
                if head:
                    message = {**message, "body": b""}
            await send(message)

        try:
            problem = self._check(scope, path)
            if problem is None and scope.get("method") in ("POST", "PUT", "PATCH"):
                problem, body = await self._buffer(scope, receive)
                if problem is None:
                    await self._run_until_disconnect(scope, receive, body, send_and_record, status)
                    return
            if problem is not None:
                status["code"] = await send_error(send, path, problem, head=head)
            else:
                await self.app(scope, receive, send_and_record)
        finally:
            self.traffic.in_flight -= 1
            m = _metrics()
            m["requests"].labels(route=route, status=str(status["code"])).inc()
            m["seconds"].labels(route=route).observe(time.perf_counter() - start)

    def _check(self, scope: dict, path: str) -> Exception | None:
        """Auth, the blocked routes and the drain, in that order (no body read yet)."""
        problem = self._check_auth(scope, path)
        if problem is None and _BLOCKED.match(path):
            problem = NotFound(f"{path[:100]} is not served: the model is loaded once at startup and cannot be "
                               "loaded or unloaded over HTTP")
        if problem is None and self.traffic.draining and (scope.get("method") == "POST" or _READY.match(path)):
            problem = Draining("the server is shutting down; retry, another replica will answer")
        return problem

    def _check_auth(self, scope: dict, path: str) -> Exception | None:
        if self.tokens is None or not self.tokens.required:
            return None
        if _OPEN.match(path) and scope.get("method") == "GET":
            return None
        token = self.tokens.token()
        if token is None:
            return Unauthorized("the server cannot read its bearer token (an operator must fix the token Secret); "
                                "every request is refused until then")
        given = ""
        for key, value in scope.get("headers", []):
            if key == b"authorization":
                given = value.decode("latin-1")
                break
        scheme, _, credential = given.partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(credential.strip().encode(), token.encode()):
            return None
        return Unauthorized("missing bearer token: send 'Authorization: Bearer <token>'" if not given
                            else "invalid bearer token")

    async def _buffer(self, scope: dict, receive: Callable):
        """Read the whole body (at most the limit, within the read timeout) and hand a replay to the app."""
        limit = self.max_body_bytes
        declared = None
        for key, value in scope.get("headers", []):
            if key == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    return RequestError(f"Content-Length {value[:20]!r} is not a number"), b""
        too_big = TooLarge(f"the request body is larger than {limit} bytes (serve.max_body_bytes); "
                           "send fewer puzzles per request")
        if declared is not None and declared > limit:
            return too_big, b""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.read_timeout_s
        chunks, size = [], 0
        while True:
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                return ReadTimeout(f"the request body took longer than {self.read_timeout_s:g} s to arrive "
                                   "(serve.read_timeout_s)"), b""
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return too_big, b""
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return None, b"".join(chunks)

    async def _run_until_disconnect(self, scope: dict, receive: Callable, body: bytes, send: Callable,
                                    status: dict) -> None:
        """Run the app on the buffered `body`; cancel it when the client disconnects first."""
        gone = asyncio.Event()
        sent = {"body": False}

        async def replay() -> dict:
            if not sent["body"]:
                sent["body"] = True
                return {"type": "http.request", "body": body, "more_body": False}
            await gone.wait()
            return {"type": "http.disconnect"}

        app = asyncio.ensure_future(self.app(scope, replay, send))
        watcher = asyncio.ensure_future(_disconnected(receive))
        try:
            await asyncio.wait({app, watcher}, return_when=asyncio.FIRST_COMPLETED)
            if watcher.done() and not app.done() and not status["done"]:
                gone.set()
                app.cancel()
                status["code"] = CLIENT_GONE
                with contextlib.suppress(asyncio.CancelledError):
                    await app
                return
            await app
        finally:
            for task in (app, watcher):
                if not task.done():
                    task.cancel()


async def _disconnected(receive: Callable) -> None:
    """Returns when the client has disconnected (the body was read before)."""
    while (await receive())["type"] != "http.disconnect":
        pass
