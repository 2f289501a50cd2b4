"""A small HTTP/1.1 server on asyncio streams, stdlib only: the admin endpoint's transport.

Why not aiohttp: importing ``aiohttp.web`` costs 0.6-0.9 s of CPU here (most of it the TLS
context that ``aiohttp.connector`` builds at import), and the admin endpoint would pay it on the
client's event loop at its first request: every message of the client stalled that long, and a
fresh client's first ``monarch status`` took ~0.7 s against ~0.1 s later (issue 14 asks for
< 200 ms). The endpoint's needs are small: a loopback listener, a handful of JSON routes, one
HTML page, bodies of a few KiB from our own tools and a browser.

What it does: request line + headers (at most :data:`MAX_HEAD_BYTES`), a body with
``Content-Length`` (at most :data:`MAX_BODY_BYTES`; ``Transfer-Encoding`` is refused with 411),
keep-alive for HTTP/1.1 clients (a browser's page polls on one connection) until
``Connection: close``, EOF or :data:`KEEPALIVE_TIMEOUT_S` idle. A malformed request gets 400
and the connection is closed; a handler's exception gets 500 (logged) and the server keeps
serving. Handlers run on the event loop that owns the server.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl, urlsplit

__all__ = [
    "KEEPALIVE_TIMEOUT_S",
    "MAX_BODY_BYTES",
    "MAX_HEAD_BYTES",
    "HttpServer",
    "Request",
    "Response",
    "json_response",
]

log = logging.getLogger("monarch.admin")

#: the largest request line + headers accepted, bytes (larger: 431, connection closed)
MAX_HEAD_BYTES = 64 * 1024
#: the largest request body accepted, bytes (larger: 413, connection closed)
MAX_BODY_BYTES = 1024 * 1024
#: how long a kept-alive connection may stay idle, and a started request may take to arrive, s
KEEPALIVE_TIMEOUT_S = 75.0

_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    411: "Length Required",
    413: "Payload Too Large",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
}


class Request:
    """One parsed request (plain slotted classes here, not dataclasses: this module is imported
    as every client starts, and a dataclass costs ~1 ms to build).

    Attributes:
        method: ``GET``, ``POST``, ... (upper case, as sent).
        path: the path without the query (``/v1/status``).
        query: the query's parameters (the last value of a repeated name).
        headers: the headers, names lower-cased (the last value of a repeated name).
        body: the body (empty without ``Content-Length``).
        version: the protocol, ``HTTP/1.1`` or ``HTTP/1.0``.
    """

    __slots__ = ("body", "headers", "method", "path", "query", "version")

    def __init__(
        self,
        method: str,
        path: str,
        query: dict[str, str],
        headers: dict[str, str],
        body: bytes = b"",
        version: str = "HTTP/1.1",
    ) -> None:
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers
        self.body = body
        self.version = version

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.path} query={self.query} body={len(self.body)} B>"

    def json(self) -> Any:
        """The body decoded as JSON.

        Raises:
            ValueError: the body is not UTF-8 JSON.
        """
        return json.loads(self.body)


class Response:
    """One response: ``status`` (an HTTP code), ``body`` and its ``content_type``."""

    __slots__ = ("body", "content_type", "status")

    def __init__(
        self, status: int, body: bytes, content_type: str = "application/json; charset=utf-8"
    ) -> None:
        self.status = status
        self.body = body
        self.content_type = content_type

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.content_type} {len(self.body)} B>"


def json_response(doc: Any, status: int = 200) -> Response:
    """A JSON response of ``doc`` (plain JSON types) with HTTP code ``status``."""
    return Response(status, json.dumps(doc).encode())


#: what a route is: a coroutine from a request to its response
Handler = Callable[[Request], Awaitable[Response]]


class _BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class HttpServer:
    """Serve ``handler`` on an already listening socket (see the module docstring).

    Args:
        sock: a bound, listening, non-blocking TCP socket; the server closes it in :meth:`close`.
        handler: answers every well-formed request (routing and authentication are its own).
    """

    def __init__(self, sock: socket.socket, handler: Handler) -> None:
        self.sock = sock
        self.handler = handler
        self._server: asyncio.AbstractServer | None = None
        self._conns: set[asyncio.Task[None]] = set()
        self._closed = False

    def __repr__(self) -> str:
        return (
            f"<HttpServer serving={self._server is not None and not self._closed}"
            f" connections={len(self._conns)}>"
        )

    async def start(self) -> None:
        """Start accepting connections (on the running loop; nothing once :meth:`close` ran)."""
        if self._closed:
            return
        self._server = await asyncio.start_server(
            self._connection, sock=self.sock, limit=MAX_HEAD_BYTES
        )

    def close(self) -> None:
        """Stop accepting, drop open connections and close the socket (on the server's loop)."""
        self._closed = True
        if self._server is not None:
            self._server.close()
        for task in list(self._conns):
            task.cancel()
        self.sock.close()

    async def wait_closed(self) -> None:
        """Wait until the connections :meth:`close` dropped have ended (on the server's loop)."""
        await asyncio.gather(*self._conns, return_exceptions=True)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        try:
            while True:
                try:
                    req = await asyncio.wait_for(_read_request(reader), KEEPALIVE_TIMEOUT_S)
                except (TimeoutError, ConnectionError, asyncio.IncompleteReadError):
                    return  # idle past the timeout, or the peer went away
                except _BadRequest as exc:
                    await _write(writer, json_response({"error": str(exc)}, exc.status), False)
                    return
                if req is None:
                    return
                try:
                    resp = await self.handler(req)
                except Exception:
                    log.exception("admin endpoint: %s %s failed", req.method, req.path)
                    resp = json_response({"error": "internal error (see the client's log)"}, 500)
                keep = _keep_alive(req)
                await _write(writer, resp, keep)
                if not keep:
                    return
        except ConnectionError:
            return
        finally:
            self._conns.discard(task)
            writer.close()


async def _read_request(reader: asyncio.StreamReader) -> Request | None:
    """The next request on the connection, or None at a clean EOF between requests."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.LimitOverrunError as exc:
        raise _BadRequest(431, f"request head over {MAX_HEAD_BYTES} bytes") from exc
    except asyncio.IncompleteReadError as exc:
        if not exc.partial.strip():
            return None
        raise _BadRequest(400, "incomplete request head") from exc
    try:
        lines = head[:-4].decode("latin-1").split("\r\n")
        method, target, version = lines[0].split(" ")
    except ValueError as exc:
        raise _BadRequest(400, "malformed request line") from exc
    if not version.startswith("HTTP/1."):
        raise _BadRequest(400, f"unsupported protocol {version!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise _BadRequest(400, f"malformed header line {line[:80]!r}")
        headers[name.lower()] = value.strip()
    if "transfer-encoding" in headers:
        raise _BadRequest(411, "send the body with Content-Length (Transfer-Encoding unsupported)")
    length_text = headers.get("content-length", "0")
    if not length_text.isdigit():
        raise _BadRequest(400, f"bad Content-Length {length_text!r}")
    length = int(length_text)
    if length > MAX_BODY_BYTES:
        raise _BadRequest(413, f"body over {MAX_BODY_BYTES} bytes")
    body = await reader.readexactly(length) if length else b""
    url = urlsplit(target)
    return Request(method, url.path, dict(parse_qsl(url.query)), headers, body, version)


def _keep_alive(req: Request) -> bool:
    conn = req.headers.get("connection", "").lower()
    if req.version == "HTTP/1.0":
        return conn == "keep-alive"
    return conn != "close"


async def _write(writer: asyncio.StreamWriter, resp: Response, keep: bool) -> None:
    reason = _REASONS.get(resp.status, "Unknown")
    head = (
        f"HTTP/1.1 {resp.status} {reason}\r\n"
        f"Content-Type: {resp.content_type}\r\n"
        f"Content-Length: {len(resp.body)}\r\n"
        "Cache-Control: no-store\r\n"
        f"Connection: {'keep-alive' if keep else 'close'}\r\n\r\n"
    )
    writer.write(head.encode("latin-1") + resp.body)
    await writer.drain()
