"""Request head limits: 431 ``request_header_fields_too_large`` for heads over the limit.

``HeaderLimit`` (ASGI) is exact: it counts the target and every header name and value that
reached the app. ``CappedHttpToolsProtocol`` (what ``stockguard serve`` gives uvicorn) is
the backstop underneath: uvicorn's httptools protocol has no limit and would read a
32 MiB header whole before the app saw it; this one stops reading at ``TRANSPORT_BYTES``.
Both answer problem+json and close the connection.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from stockguard.api.problems import problem

__all__ = ["MAX_HEADER_BYTES", "TRANSPORT_BYTES", "CappedHttpToolsProtocol", "HeaderLimit"]

MAX_HEADER_BYTES = 16 * 1024  # an API key is ~50 bytes; proxies' headers fit many times
TRANSPORT_BYTES = 64 * 1024  # heads between the two limits reach HeaderLimit's exact 431


def _too_large(limit: int) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
    response = problem(
        431,
        "request_header_fields_too_large",
        "Request header fields too large",
        f"the request line and headers are limited to {limit} bytes",
    )
    response.headers["Connection"] = "close"
    return response.status_code, bytes(response.body), response.raw_headers


class HeaderLimit:
    def __init__(self, app: ASGIApp, max_bytes: int = MAX_HEADER_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            size = len(scope.get("raw_path") or b"") + len(scope.get("query_string", b""))
            for name, value in scope["headers"]:
                size += len(name) + len(value)
            if size > self.max_bytes:
                status, body, headers = _too_large(self.max_bytes)
                await send({"type": "http.response.start", "status": status, "headers": headers})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


class CappedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol that stops reading a request head at
    ``TRANSPORT_BYTES`` (plus at most one read) and answers malformed requests with
    problem+json instead of uvicorn's plain text."""

    _in_head = False
    _head_bytes = 0

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head, self._head_bytes = True, 0

    def on_headers_complete(self) -> None:
        self._in_head = False
        super().on_headers_complete()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        # Every read that ended inside a head counts whole: a read that also held the end
        # of a pipelined request's body counts too much, never too little.
        if self._in_head and not self.transport.is_closing():
            self._head_bytes += len(data)
            if self._head_bytes > TRANSPORT_BYTES:
                self._in_head = False
                status, body, headers = _too_large(TRANSPORT_BYTES)
                self._write(status, b"Request Header Fields Too Large", body, headers)

    def send_400_response(self, msg: str) -> None:
        response = problem(400, "bad_request", "Bad request", msg)
        response.headers["Connection"] = "close"
        self._write(400, b"Bad Request", bytes(response.body), response.raw_headers)

    def _write(
        self, status: int, reason: bytes, body: bytes, headers: list[tuple[bytes, bytes]]
    ) -> None:
        head = [b"HTTP/1.1 %d %s\r\n" % (status, reason)]
        head += [name + b": " + value + b"\r\n" for name, value in headers]
        self.transport.write(b"".join([*head, b"\r\n", body]))
        self.transport.close()
