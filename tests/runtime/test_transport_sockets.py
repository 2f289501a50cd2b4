"""SocketTransport on real sockets: mutual TCP authentication, non-blocking connect, bounded
input and memory from hostile or idle peers."""

from __future__ import annotations

import asyncio
import gc
import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from monarch._core.errors import ConnectError, ProtocolError
from monarch._transport.auth import dial_handshake_blocking
from monarch._transport.base import TransportSettings
from monarch._transport.frame import Envelope, encode_frame
from monarch._transport.sockets import SocketTransport

TOKEN = b"cluster-secret"


class Loop:
    """An event loop on its own thread, plus what the transports built on it saw."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.frames: list[tuple[Any, Any, list[bytes]]] = []
        self.closes: list[tuple[Any, BaseException | None]] = []
        self.links: list[Any] = []
        self.changed = threading.Condition()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def call(self, fn: Callable[[], Any], timeout_s: float = 10.0) -> Any:
        async def run() -> Any:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(timeout_s)

    def on_frame(self, link: Any, env: Any, bufs: list[memoryview]) -> None:
        with self.changed:
            self.frames.append((link, env, [bytes(b) for b in bufs]))
            self.changed.notify_all()

    def on_close(self, link: Any, exc: BaseException | None) -> None:
        with self.changed:
            self.closes.append((link, exc))
            self.changed.notify_all()

    def on_link(self, link: Any) -> None:
        with self.changed:
            self.links.append(link)
            self.changed.notify_all()

    def wait(self, pred: Callable[[], bool], timeout_s: float = 10.0) -> bool:
        with self.changed:
            return self.changed.wait_for(pred, timeout_s)

    def transport(self, token: bytes | None = TOKEN, **settings: Any) -> SocketTransport:
        return self.call(
            lambda: SocketTransport(
                self.loop, self.on_frame, self.on_close, token=token, settings=TransportSettings(**settings)
            )
        )

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture
def lp() -> Iterator[Loop]:
    loop = Loop()
    yield loop
    loop.stop()


def _hello(text: str) -> list[Any]:
    env = Envelope.new_message()
    env.kind = "hello"
    env.origin = text
    return encode_frame(env, [])


def _unix_addr(tmp_path: Any, name: str = "l.sock") -> str:
    return f"unix:{tmp_path}/{name}"


def test_tcp_link_carries_frames_both_ways_after_mutual_authentication(lp: Loop) -> None:
    server, client = lp.transport(), lp.transport()
    lst = lp.call(lambda: server.listen("tcp:127.0.0.1:0", lp.on_link))
    link = client.connect(lst.address)
    link.send(_hello("from-client"))
    assert lp.wait(lambda: len(lp.frames) == 1)
    assert lp.frames[0][1].origin == "from-client" and lp.links and not lp.links[0].outgoing
    lp.links[0].send(_hello("from-server"))
    assert lp.wait(lambda: len(lp.frames) == 2)
    assert lp.frames[1][0] is link and lp.frames[1][1].origin == "from-server" and link.outgoing
    lp.call(server.close)
    lp.call(client.close)


def test_dialer_with_the_wrong_token_is_refused_before_any_frame(lp: Loop) -> None:
    server, client = lp.transport(), lp.transport(token=b"wrong")
    lst = lp.call(lambda: server.listen("tcp:127.0.0.1:0", lp.on_link))
    link = client.connect(lst.address)
    try:
        link.send(_hello("x"))
    except ConnectionError:
        pass  # the refusal may already have closed the link
    assert lp.wait(lambda: any(c[0] is link for c in lp.closes))
    exc = next(e for c, e in lp.closes if c is link)
    assert isinstance(exc, ConnectError) and lst.address in str(exc)
    assert not lp.frames and not lp.links


def _fake_listener(first: bytes, wait_s: float = 5.0) -> tuple[str, threading.Thread, list[bytes]]:
    """A TCP server that does not know the token: it sends ``first`` then a frame a real proc
    would act on, and records what the dialer sent (waiting at most ``wait_s`` for it)."""
    srv = socket.create_server(("127.0.0.1", 0))
    got: list[bytes] = []

    def run() -> None:
        srv.settimeout(10)
        try:
            conn, _ = srv.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(wait_s)
            try:
                conn.sendall(first)
                got.append(conn.recv(4096))
                conn.sendall(bytes(32) + b"".join(bytes(memoryview(b)) for b in _hello("evil")))
                got.append(conn.recv(4096))
            except OSError:
                pass
        srv.close()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return f"tcp:127.0.0.1:{srv.getsockname()[1]}", t, got


def test_dialer_refuses_a_listener_that_does_not_know_the_token(lp: Loop) -> None:
    from monarch._transport.auth import MAGIC

    addr, t, _ = _fake_listener(MAGIC + os.urandom(32))
    client = lp.transport()
    link = client.connect(addr)
    assert lp.wait(lambda: any(c[0] is link for c in lp.closes))
    exc = next(e for c, e in lp.closes if c is link)
    assert isinstance(exc, ConnectError) and "does not know the cluster token" in str(exc)
    assert not lp.frames  # nothing the fake listener sent was decoded
    t.join(10)


def test_blocking_handshake_refuses_a_listener_that_does_not_know_the_token() -> None:
    # the old one-way protocol: the listener sent a bare 32-byte nonce and was never checked;
    # it then waits for an answer the dialer never sends, gives up first (1 s, before the
    # dialer's 5 s timeout) and closes: the dialer must refuse, not time out
    addr, t, _ = _fake_listener(os.urandom(32), wait_s=1.0)
    host, _, port = addr[4:].rpartition(":")
    sock = socket.create_connection((host, int(port)), timeout=5)
    try:
        with pytest.raises(ProtocolError):
            dial_handshake_blocking(sock, TOKEN)
    finally:
        sock.close()
    t.join(10)


def test_connect_returns_at_once_and_the_loop_stays_responsive_for_a_silent_address(lp: Loop) -> None:
    # a listener that never accepts nor speaks: the handshake can never finish
    silent = socket.create_server(("127.0.0.1", 0))
    try:
        client = lp.transport(connect_timeout_s=1.0)
        addr = f"tcp:127.0.0.1:{silent.getsockname()[1]}"
        t0 = time.monotonic()
        link = client.connect(addr)
        assert time.monotonic() - t0 < 0.1
        t1 = time.monotonic()
        assert lp.call(lambda: 42, timeout_s=2) == 42  # the loop answers while dialing
        assert time.monotonic() - t1 < 0.5
        link.send(_hello("queued"))  # queued while dialing
        assert lp.wait(lambda: any(c[0] is link for c in lp.closes), timeout_s=5)
        exc = next(e for c, e in lp.closes if c is link)
        assert isinstance(exc, ConnectError) and addr in str(exc)
        with pytest.raises(ConnectionError):
            link.send(_hello("late"))
    finally:
        silent.close()


def test_frames_sent_before_a_unix_link_is_up_arrive_in_order(lp: Loop, tmp_path: Any) -> None:
    server, client = lp.transport(), lp.transport()
    lst = lp.call(lambda: server.listen(_unix_addr(tmp_path), lp.on_link))
    link = client.connect(lst.address)
    for i in range(100):
        link.send(_hello(str(i)))
    assert lp.wait(lambda: len(lp.frames) == 100)
    assert [f[1].origin for f in lp.frames] == [str(i) for i in range(100)]


def test_connect_queue_is_bounded_while_dialing(lp: Loop) -> None:
    silent = socket.create_server(("127.0.0.1", 0))
    try:
        client = lp.transport(connect_timeout_s=5.0, max_connect_queue_bytes=4096)
        link = client.connect(f"tcp:127.0.0.1:{silent.getsockname()[1]}")
        link.send([bytes(4000)])
        with pytest.raises(ConnectionError, match="queue is full"):
            link.send([bytes(200)])
        lp.call(link.close)
    finally:
        silent.close()


def test_connecting_to_nothing_closes_the_link_with_a_connect_error(lp: Loop, tmp_path: Any) -> None:
    client = lp.transport()
    addr = _unix_addr(tmp_path, "nobody.sock")
    link = client.connect(addr)
    assert lp.wait(lambda: any(c[0] is link for c in lp.closes))
    exc = next(e for c, e in lp.closes if c is link)
    assert isinstance(exc, ConnectError) and addr in str(exc)


def test_bad_address_is_a_value_error(lp: Loop) -> None:
    client = lp.transport()
    with pytest.raises(ValueError):
        client.connect("http://x")


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_idle_unix_connections_hold_no_receive_buffer(lp: Loop, tmp_path: Any) -> None:
    n = 1000
    server = lp.transport(max_connections=n + 50, authenticate_unix=False)
    lst = lp.call(lambda: server.listen(_unix_addr(tmp_path), lp.on_link))
    path = lst.address[5:]
    socks: list[socket.socket] = []
    try:
        # warm up the allocator and the code paths with a few, then measure the rest
        for _ in range(20):
            s = socket.socket(socket.AF_UNIX)
            s.connect(path)
            socks.append(s)
            s.sendall(b"".join(bytes(memoryview(b)) for b in _hello("warm")))
        assert lp.wait(lambda: len(lp.frames) == 20)
        gc.collect()
        before = _rss_bytes()
        for _ in range(n):
            s = socket.socket(socket.AF_UNIX)
            s.connect(path)
            socks.append(s)
        assert lp.wait(lambda: len(lp.links) == n + 20, timeout_s=30)
        # one frame on each: every link's read path has run
        hello = b"".join(bytes(memoryview(b)) for b in _hello("idle"))
        for s in socks[20:]:
            s.sendall(hello)
        assert lp.wait(lambda: len(lp.frames) == n + 20, timeout_s=30)
        per_conn = (_rss_bytes() - before) / n
        assert per_conn < 48 * 1024, f"{per_conn:.0f} bytes of memory per idle connection"
    finally:
        for s in socks:
            s.close()
        lp.call(server.close)


def test_connections_beyond_max_connections_are_refused(lp: Loop, tmp_path: Any) -> None:
    server = lp.transport(max_connections=3, authenticate_unix=False)
    lst = lp.call(lambda: server.listen(_unix_addr(tmp_path), lp.on_link))
    socks = []
    try:
        for _ in range(3):
            s = socket.socket(socket.AF_UNIX)
            s.connect(lst.address[5:])
            socks.append(s)
        assert lp.wait(lambda: len(lp.links) == 3)
        extra = socket.socket(socket.AF_UNIX)
        socks.append(extra)
        extra.connect(lst.address[5:])
        extra.settimeout(5)
        assert extra.recv(1) == b""  # closed by the server
        assert len(lp.links) == 3
        # closing one makes room again
        socks[0].close()
        assert lp.wait(lambda: len(lp.closes) == 1)
        again = socket.socket(socket.AF_UNIX)
        socks.append(again)
        again.connect(lst.address[5:])
        assert lp.wait(lambda: len(lp.links) == 4)
    finally:
        for s in socks:
            s.close()
        lp.call(server.close)


def test_oversized_envelope_from_a_unix_peer_closes_only_that_link(lp: Loop, tmp_path: Any) -> None:
    server = lp.transport(max_envelope_bytes=4096, authenticate_unix=False)
    lst = lp.call(lambda: server.listen(_unix_addr(tmp_path), lp.on_link))
    good, bad = socket.socket(socket.AF_UNIX), socket.socket(socket.AF_UNIX)
    try:
        good.connect(lst.address[5:])
        bad.connect(lst.address[5:])
        assert lp.wait(lambda: len(lp.links) == 2)
        bad.sendall(struct.pack("<II", 0, 1 << 20))  # claims an 8 MiB envelope
        assert lp.wait(lambda: len(lp.closes) == 1)
        exc = lp.closes[0][1]
        assert isinstance(exc, ProtocolError) and "exceeds the limit" in str(exc)
        good.sendall(b"".join(bytes(memoryview(b)) for b in _hello("still-here")))
        assert lp.wait(lambda: len(lp.frames) == 1)
        assert lp.frames[0][1].origin == "still-here"
    finally:
        good.close()
        bad.close()
        lp.call(server.close)


def test_tcp_links_carry_heartbeats_bounded_by_the_peer_timeout(lp: Loop) -> None:
    server, client = lp.transport(peer_timeout_s=2.0), lp.transport(peer_timeout_s=2.0)
    lst = lp.call(lambda: server.listen("tcp:127.0.0.1:0", lp.on_link))
    link = client.connect(lst.address)
    assert lp.wait(lambda: len(lp.links) == 1)
    assert lp.wait(lambda: link.sock is not None)
    sock = link.sock
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 2000
    idle = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE)
    intvl = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL)
    cnt = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT)
    assert idle + intvl * cnt <= 2
    lp.call(client.close)
    lp.call(server.close)


def test_settings_reject_nonsense() -> None:
    with pytest.raises(ValueError, match="peer_timeout_s"):
        TransportSettings(peer_timeout_s=0.1)
    with pytest.raises(ValueError, match="max_connections"):
        TransportSettings(max_connections=0)


def test_connecting_over_tcp_without_a_token_fails_without_touching_the_network(lp: Loop) -> None:
    client = lp.transport(token=None)
    link = client.connect("tcp:127.0.0.1:9")  # the discard port: nothing must be dialed
    assert lp.wait(lambda: any(c[0] is link for c in lp.closes))
    exc = next(e for c, e in lp.closes if c is link)
    assert isinstance(exc, ConnectError) and "cluster token" in str(exc)


def test_a_listener_without_a_token_refuses_tcp_dialers(lp: Loop) -> None:
    server, client = lp.transport(token=None), lp.transport()
    lst = lp.call(lambda: server.listen("tcp:127.0.0.1:0", lp.on_link))
    link = client.connect(lst.address)
    assert lp.wait(lambda: any(c[0] is link for c in lp.closes))
    assert isinstance(next(e for c, e in lp.closes if c is link), ConnectError)
    assert not lp.links


def test_a_unix_peer_that_cannot_prove_the_token_is_refused_before_any_frame(lp: Loop, tmp_path: Any) -> None:
    server = lp.transport()  # a token and the default authenticate_unix=True
    lst = lp.call(lambda: server.listen(_unix_addr(tmp_path), lp.on_link))
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(lst.address[5:])
        s.settimeout(10)
        s.sendall(b"".join(bytes(memoryview(b)) for b in _hello("intruder")))  # frames, not a proof
        try:
            while s.recv(4096):  # the challenge, then the close
                pass
        except ConnectionResetError:  # closed with our unread frames in its buffer
            pass
        assert not lp.frames and not lp.links
    finally:
        s.close()
        lp.call(server.close)


def test_unix_links_between_two_transports_with_the_token_carry_frames(lp: Loop, tmp_path: Any) -> None:
    server, client = lp.transport(), lp.transport()
    lst = lp.call(lambda: server.listen(_unix_addr(tmp_path), lp.on_link))
    link = lp.call(lambda: client.connect(lst.address))
    link.send(_hello("member"))
    assert lp.wait(lambda: any(env.origin == "member" for _l, env, _b in lp.frames))
    lp.call(server.close)
    lp.call(client.close)


def test_a_frame_ending_in_an_empty_buffer_does_not_stall_the_sending_link(lp: Loop, tmp_path: Any) -> None:
    # an empty out-of-band buffer (what pickling torch.empty(0) gives) once left an empty piece
    # queued that the writer retried forever, holding the link's lock
    server, client = lp.transport(), lp.transport()
    lst = lp.call(lambda: server.listen(_unix_addr(tmp_path), lp.on_link))
    env = Envelope.new_message()
    env.kind = "hello"
    env.origin = "empty-buffer"
    env.buffers = [3, 0]
    link = client.connect(lst.address)
    link.send(_hello("first"))
    assert lp.wait(lambda: len(lp.frames) == 1, timeout_s=5)
    # the link is up and idle: the frame goes out in one sendmsg, and the bookkeeping of what
    # was written used to keep the empty last piece as unsent
    link.send(encode_frame(env, [b"abc", b""]))
    assert lp.wait(lambda: len(lp.frames) == 2, timeout_s=5)
    assert lp.frames[1][2] == [b"abc", b""]
    assert lp.call(lambda: 7, timeout_s=2) == 7  # the loop still answers (it spun on the empty piece)
    link.send(_hello("after"))
    assert lp.wait(lambda: len(lp.frames) == 3, timeout_s=5)
    assert lp.frames[2][1].origin == "after"
    lp.call(server.close)
    lp.call(client.close)
