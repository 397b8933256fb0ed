"""uvicorn's HTTP protocol with a header read timeout.

uvicorn closes idle keep-alive connections, but a client that opens a connection and sends
its request headers slowly (or never) holds it forever: a few hundred such clients exhaust
the server. This protocol gives every request `timeout_s` to deliver its headers (the body
has its own limit in cello.serve.middleware), then answers 408 and closes the connection.

    config.http = with_header_timeout(30.0)   # a uvicorn.Config accepts a protocol class
"""

from __future__ import annotations

from typing import Any

_TIMEOUT_REPLY = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
                  b"content-length: %d\r\n\r\n%s")


def with_header_timeout(timeout_s: float) -> type:
    """A subclass of uvicorn's HTTP protocol (httptools or h11, as uvicorn picks) with the timeout."""
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    from cello.serve.errors import error_body

    body = error_body("/", 408, f"the request headers took longer than {timeout_s:g} s (serve.read_timeout_s)")
    reply = _TIMEOUT_REPLY % (len(body), body)

    class HeaderTimeoutProtocol(AutoHTTPProtocol):  # type: ignore[misc, valid-type]
        _header_timer: Any = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            if self._waiting() and self._header_timer is None:
                self._arm()  # the next request on a kept-alive connection begins
            super().data_received(data)
            if not self._waiting():
                self._disarm()

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _waiting(self) -> bool:
            """No request in progress: headers are (still) expected."""
            return self.cycle is None or self.cycle.response_complete

        def _arm(self) -> None:
            self._header_timer = self.loop.call_later(timeout_s, self._too_slow)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _too_slow(self) -> None:
            self._header_timer = None
            if self._waiting() and not self.transport.is_closing():
                self.transport.write(reply)
                self.transport.close()

    return HeaderTimeoutProtocol
