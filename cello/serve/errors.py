"""Every error `cello serve` answers: one table from error type to HTTP status, one JSON body.

Why one place: routes, the middleware and the batcher raise typed errors; the status a client
sees is looked up here by type (the first match along the class hierarchy), never decided by
reading message text, so the same failure gets the same status on every route.

    raise QueueFull("the server is busy ...")     # -> 429 with Retry-After, on v1, v2 and OpenAI
    error_body("/openai/v1/chat/completions", 400, "...")   # OpenAI's {"error": {...}} shape

Bodies are `{"error": "..."}`, or OpenAI's `{"error": {"message", "type", "code"}}` under
/openai, which the official SDK parses into its exception types.
"""

from __future__ import annotations

import json
from typing import Any


class ServeError(Exception):
    """Base of the errors a client is told about; the message is safe to send back."""


class RequestError(ServeError, ValueError):
    """A request that breaks the schema or a limit (HTTP 400)."""


class Unauthorized(ServeError):
    """No valid bearer token, or the server's token source is broken (HTTP 401: fail closed)."""


class NotFound(ServeError):
    """An unknown model or a route Cello does not serve (HTTP 404)."""


class MethodNotAllowed(ServeError):
    """A served route asked with the wrong method (HTTP 405); `allow` lists the right ones."""

    def __init__(self, message: str, *, allow: str) -> None:
        super().__init__(message)
        self.allow = allow


class ReadTimeout(ServeError):
    """The client sent its body too slowly (HTTP 408)."""


class TooLarge(ServeError):
    """The body is over serve.max_body_bytes (HTTP 413)."""


class QueueFull(ServeError):
    """Too many conversations are waiting; retry later (HTTP 429)."""


class BackendError(ServeError):
    """Generation failed in the server (HTTP 500)."""


class UpstreamRefused(BackendError):
    """The upstream model server refused the request as invalid (HTTP 400, its message passed on)."""


class Unavailable(ServeError):
    """Not able to serve now: not ready, or the upstream is unreachable (HTTP 503)."""


class UpstreamUnavailable(Unavailable, BackendError):
    """The upstream model server cannot be reached or is overloaded (HTTP 503)."""


class Draining(Unavailable):
    """The server is shutting down; another replica will answer (HTTP 503 with Retry-After)."""


class GenerationTimeout(ServeError):
    """Generation did not finish within serve.timeout_s (HTTP 504)."""


# error type -> (HTTP status, extra headers); looked up along the exception's class hierarchy
STATUS: dict[type[BaseException], tuple[int, dict[str, str]]] = {
    RequestError: (400, {}),
    UpstreamRefused: (400, {}),
    Unauthorized: (401, {"WWW-Authenticate": "Bearer"}),
    NotFound: (404, {}),
    MethodNotAllowed: (405, {}),
    ReadTimeout: (408, {"Connection": "close"}),
    TooLarge: (413, {}),
    QueueFull: (429, {"Retry-After": "1"}),
    BackendError: (500, {}),
    Unavailable: (503, {"Retry-After": "1"}),
    Draining: (503, {"Retry-After": "5"}),
    GenerationTimeout: (504, {}),
}


def status_of(exc: BaseException) -> tuple[int, dict[str, str]]:
    """(status, headers) for `exc`: the table entry of its nearest class; 500 for anything else."""
    for cls in type(exc).__mro__:
        if cls in STATUS:
            status, headers = STATUS[cls]
            if isinstance(exc, MethodNotAllowed):
                headers = {**headers, "Allow": exc.allow}
            return status, headers
    return 500, {}


def error_body(path: str, status: int, message: str) -> bytes:
    """The JSON error body for `path`: OpenAI's shape under /openai, else {"error": message}."""
    if path.startswith("/openai/"):
        kind = "invalid_request_error" if status < 500 else "server_error"
        body: dict[str, Any] = {"error": {"message": message, "type": kind, "code": status}}
    else:
        body = {"error": message}
    return json.dumps(body).encode()


def error_response(path: str, exc: BaseException, *, status: int | None = None):
    """A Starlette response for `exc` on `path` (status from the table unless given)."""
    from starlette.responses import Response

    code, headers = status_of(exc)
    return Response(error_body(path, status or code, str(exc)), status_code=status or code,
                    media_type="application/json", headers=headers)


async def send_error(send: Any, path: str, exc: BaseException, *, head: bool = False) -> int:
    """Answer `exc` on a raw ASGI `send` (for middleware); returns the status sent."""
    code, headers = status_of(exc)
    body = error_body(path, code, str(exc))
    raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": code,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *raw]})
    await send({"type": "http.response.body", "body": b"" if head else body})
    return code
