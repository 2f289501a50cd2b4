"""The admin endpoint's stdlib HTTP server (``monarch._mesh.admin_http``) over a real loopback
socket: requests parsed, keep-alive, and the clear refusals of what it does not serve."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from monarch._mesh.admin_http import (
    MAX_BODY_BYTES,
    HttpServer,
    Request,
    Response,
    json_response,
)


@pytest.fixture
def server() -> Iterator[tuple[int, list[Request]]]:
    """An :class:`HttpServer` on its own loop thread whose handler echoes each request as JSON
    (``/boom`` raises); yields ``(port, requests seen)``; stopped afterwards."""
    seen: list[Request] = []

    async def handler(req: Request) -> Response:
        seen.append(req)
        if req.path == "/boom":
            raise RuntimeError("boom")
        return json_response(
            {"method": req.method, "path": req.path, "query": req.query, "body": req.body.decode()}
        )

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    sock.setblocking(False)
    port = sock.getsockname()[1]
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    srv = HttpServer(sock, handler)
    asyncio.run_coroutine_threadsafe(srv.start(), loop).result(10.0)
    try:
        yield port, seen
    finally:

        async def stop() -> None:
            srv.close()
            await srv.wait_closed()

        asyncio.run_coroutine_threadsafe(stop(), loop).result(10.0)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10.0)
        loop.close()


def _responses(port: int, raw: bytes, count: int = 1) -> list[tuple[int, dict[str, str], bytes]]:
    """Send ``raw`` on one connection and read ``count`` responses (or until the server closes)."""
    out = []
    with socket.create_connection(("127.0.0.1", port), timeout=10.0) as s:
        s.sendall(raw)
        buf = b""
        while len(out) < count:
            while b"\r\n\r\n" not in buf:
                chunk = s.recv(65536)
                if not chunk:
                    return out
                buf += chunk
            head, _, buf = buf.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            headers = {k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
            n = int(headers["content-length"])
            while len(buf) < n:
                chunk = s.recv(65536)
                assert chunk, "the server closed mid-body"
                buf += chunk
            out.append((int(lines[0].split(" ")[1]), headers, buf[:n]))
            buf = buf[n:]
    return out


def test_a_get_with_a_query_reaches_the_handler_parsed(server: Any) -> None:
    port, seen = server
    [(status, headers, body)] = _responses(
        port, b"GET /v1/env?prefix=NCCL_&x=%2F HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
    )
    assert status == 200 and headers["content-type"].startswith("application/json")
    assert json.loads(body) == {
        "method": "GET",
        "path": "/v1/env",
        "query": {"prefix": "NCCL_", "x": "/"},
        "body": "",
    }
    assert headers["connection"] == "close" and seen[0].headers["host"] == "h"


def test_a_post_body_is_read_by_content_length(server: Any) -> None:
    port, _ = server
    body = json.dumps({"code": "print(1)"}).encode()
    [(status, _, answer)] = _responses(
        port,
        b"POST /v1/exec HTTP/1.1\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
        % (len(body), body),
    )
    assert status == 200 and json.loads(json.loads(answer)["body"]) == {"code": "print(1)"}


def test_http_1_1_keeps_the_connection_for_the_next_request(server: Any) -> None:
    port, seen = server
    answers = _responses(port, b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n", count=2)
    assert [json.loads(b)["path"] for _, _, b in answers] == ["/a", "/b"]
    assert answers[0][1]["connection"] == "keep-alive" and len(seen) == 2


def test_http_1_0_closes_after_one_answer(server: Any) -> None:
    port, _ = server
    answers = _responses(port, b"GET /a HTTP/1.0\r\n\r\nGET /b HTTP/1.0\r\n\r\n", count=2)
    assert len(answers) == 1 and answers[0][1]["connection"] == "close"


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"NONSENSE\r\n\r\n", 400),
        (b"GET / SPDY/3\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nno colon here\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nContent-Length: ten\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 411),
        (b"POST / HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % (MAX_BODY_BYTES + 1), 413),
        (b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n", 431),
    ],
)
def test_a_request_it_cannot_serve_gets_its_code_and_the_connection_closes(
    server: Any, raw: bytes, status: int
) -> None:
    port, seen = server
    answers = _responses(port, raw + b"GET /after HTTP/1.1\r\n\r\n", count=2)
    assert [a[0] for a in answers] == [status] and "error" in json.loads(answers[0][2])
    assert seen == []  # the handler never saw it, nor what followed on that connection


def test_a_handler_exception_is_a_500_and_the_server_keeps_serving(server: Any) -> None:
    port, _ = server
    [(status, _, body)] = _responses(port, b"GET /boom HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert status == 500 and "internal error" in json.loads(body)["error"]
    [(status, _, _)] = _responses(port, b"GET /ok HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert status == 200
