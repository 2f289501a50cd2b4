"""The owner's RDMA TCP server against hostile and misbehaving peers on real sockets.

The owner is ``rdma_owner_proc.py`` in a subprocess; this test process speaks the wire protocol
of :mod:`monarch.rdma._tcp` directly, so it can stall, idle and flood where a real client would not.
"""

from __future__ import annotations

import socket
import time

import pytest
from monarch._core.errors import RDMAError
from monarch.rdma._tcp import _MAGIC, _REP, _REQ, OP_READ, OP_WRITE
from rdma_owner_proc import pattern

pytestmark = pytest.mark.rdma


def _dial(buf, timeout_s: float = 10.0) -> socket.socket:
    desc = buf._desc
    sock = socket.create_connection((desc.tcp_host, desc.tcp_port), timeout=timeout_s)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    out = bytearray()
    while len(out) < size:
        chunk = sock.recv(size - len(out))
        if not chunk:
            raise ConnectionError("closed")
        out += chunk
    return bytes(out)


def _closed_by_peer(sock: socket.socket) -> bool:
    """Read until EOF (or a reset); True if the peer closed, False if the wait timed out."""
    try:
        while sock.recv(4096):
            pass
    except TimeoutError:
        return False
    except ConnectionError:
        pass
    return True


def test_stalled_write_past_the_grace_period_never_touches_freed_memory(own_owner):
    owner = own_owner
    size = 64 << 10  # below malloc's mmap threshold: the region lives on the owner's heap
    owner.ask(op="configure", drop_grace_s=0.1, backend="tcp")
    index, buf = owner.register(size, salt=4)
    sock = _dial(buf)
    try:
        desc = buf._desc
        sock.sendall(_REQ.pack(_MAGIC, OP_WRITE, desc.region_id, desc.key, 0, size))
        status, _ = _REP.unpack(_recv_exact(sock, _REP.size))
        assert status == 0  # the server is now receiving into the region
        sock.sendall(b"\xa5")
        owner.ask(op="drop", index=index)
        # The owner forgets the memory; once freed, the heap is refilled with sentinels.
        answer = owner.ask(op="release", index=index)
        assert answer["freed"], "the dropped region's memory was never released"
        try:
            sock.sendall(b"\xa5" * (size - 1))  # the stalled writer wakes up
            reply = sock.recv(_REP.size)
        except ConnectionError:
            reply = b""
        # The write was refused or cut off, never acknowledged.
        assert reply == b"" or reply[0] != 0
    finally:
        sock.close()
    assert owner.ask(op="sentinels")["ok"], "the write landed in freed memory"
    # The owner is alive and still serves.
    _, buf2 = owner.register(4096, salt=6)
    dst = bytearray(4096)
    buf2.read_into(memoryview(dst), timeout=10).get(timeout=30)
    assert dst == pattern(4096, 6)
    assert owner.proc.poll() is None


def test_read_of_a_dropped_region_fails_with_rdma_error_on_the_remote_side(owner, rdma_backend_tcp):
    index, buf = owner.register(4096, salt=2)
    owner.ask(op="drop", index=index)
    with pytest.raises(RDMAError, match="dropped or never existed"):
        buf.read_into(memoryview(bytearray(4096)), timeout=10).get(timeout=30)
    sock = _dial(buf)
    try:
        desc = buf._desc
        sock.sendall(_REQ.pack(_MAGIC, OP_READ, desc.region_id, desc.key, 0, 4096))
        status, length = _REP.unpack(_recv_exact(sock, _REP.size))
        assert status != 0
        assert b"dropped" in _recv_exact(sock, length)
    finally:
        sock.close()


@pytest.fixture
def rdma_backend_tcp():
    from monarch.rdma import configure

    before = configure().backend
    configure(backend="tcp")
    try:
        yield "tcp"
    finally:
        configure(backend=before)


def test_connections_beyond_the_limit_are_closed_and_the_server_stays_usable(own_owner):
    owner = own_owner
    limit = 8
    owner.ask(op="configure", tcp_max_connections=limit)
    _, buf = owner.register(4096, salt=1)
    idle = []
    try:
        for _ in range(limit):
            idle.append(_dial(buf))
        # Each admitted connection is served: a read answers on every one of them.
        desc = buf._desc
        for sock in idle:
            sock.sendall(_REQ.pack(_MAGIC, OP_READ, desc.region_id, desc.key, 0, 16))
            assert _REP.unpack(_recv_exact(sock, _REP.size)) == (0, 16)
            assert _recv_exact(sock, 16) == pattern(16, 1)
        extra = [_dial(buf, timeout_s=10) for _ in range(3)]
        try:
            for sock in extra:
                assert _closed_by_peer(sock), "a connection beyond the limit was kept open"
        finally:
            for sock in extra:
                sock.close()
    finally:
        for sock in idle:
            sock.close()
    # With the idle connections gone, new ones are admitted again (the close is noticed at once).
    deadline = time.monotonic() + 10
    while True:
        sock = _dial(buf)
        try:
            sock.sendall(_REQ.pack(_MAGIC, OP_READ, desc.region_id, desc.key, 0, 16))
            try:
                header = _recv_exact(sock, _REP.size)
            except ConnectionError:
                header = b""
        finally:
            sock.close()
        if header and _REP.unpack(header) == (0, 16):
            break
        assert time.monotonic() < deadline, "the server never admitted a connection again"


def test_an_idle_connection_is_closed_after_the_idle_timeout(own_owner):
    owner = own_owner
    owner.ask(op="configure", tcp_idle_timeout_s=0.5)
    _, buf = owner.register(4096, salt=1)
    sock = _dial(buf, timeout_s=10)
    try:
        start = time.monotonic()
        assert _closed_by_peer(sock), "the idle connection stayed open for 10 s"
        assert time.monotonic() - start >= 0.4
    finally:
        sock.close()


def test_a_writer_that_stalls_mid_transfer_is_cut_off_after_the_idle_timeout(own_owner):
    owner = own_owner
    owner.ask(op="configure", tcp_idle_timeout_s=0.5)
    index, buf = owner.register(4096, salt=1)
    sock = _dial(buf, timeout_s=10)
    try:
        desc = buf._desc
        sock.sendall(_REQ.pack(_MAGIC, OP_WRITE, desc.region_id, desc.key, 0, 4096))
        assert _REP.unpack(_recv_exact(sock, _REP.size))[0] == 0
        sock.sendall(b"\x01" * 100)
        assert _closed_by_peer(sock), "the stalled write held its connection for 10 s"
    finally:
        sock.close()
    # The owner can drop the region at once: no server operation still holds it.
    start = time.monotonic()
    owner.ask(op="drop", index=index)
    assert time.monotonic() - start < 2


def test_an_oversized_control_request_closes_the_connection(own_owner):
    owner = own_owner
    owner.ask(op="configure", tcp_max_request_bytes=1024)
    _, buf = owner.register(4096, salt=1)
    sock = _dial(buf)
    try:
        sock.sendall(_REQ.pack(_MAGIC, 4, 0, 0, 0, 1 << 40))
        assert _closed_by_peer(sock)
    finally:
        sock.close()


def test_a_pooled_connection_closed_by_the_idle_timeout_is_replaced_transparently(
    own_owner, rdma_backend_tcp
):
    import select

    from monarch.rdma import _tcp

    owner = own_owner
    owner.ask(op="configure", tcp_idle_timeout_s=0.3)
    _, buf = owner.register(4096, salt=8)
    dst = bytearray(4096)
    buf.read_into(memoryview(dst), timeout=10).get(timeout=30)
    peer = (buf._desc.tcp_host, buf._desc.tcp_port)
    pooled = [s for _, s in _tcp._pool._idle.get(peer, [])]
    assert pooled, "the connection was not pooled"
    poller = select.poll()
    poller.register(pooled[-1], select.POLLIN)
    assert poller.poll(10_000), "the server never closed the idle connection"
    dst = bytearray(4096)
    buf.read_into(memoryview(dst), timeout=10).get(timeout=30)
    assert dst == pattern(4096, 8)


def test_the_client_pool_keeps_a_bounded_number_of_idle_connections():
    from monarch.rdma import _tcp

    pool = _tcp._Pool()
    pairs = [socket.socketpair() for _ in range(3 * _tcp._MAX_IDLE_PER_PEER)]
    try:
        for a, _ in pairs:
            pool.give("127.0.0.1", 1, a)
        assert len(pool) == _tcp._MAX_IDLE_PER_PEER
        closed = sum(1 for a, _ in pairs if a.fileno() == -1)
        assert closed == 2 * _tcp._MAX_IDLE_PER_PEER
    finally:
        for a, b in pairs:
            a.close()
            b.close()


def test_a_pooled_connection_whose_server_went_away_is_not_reused():
    from monarch.rdma import _tcp

    pool = _tcp._Pool()
    listener = socket.create_server(("127.0.0.1", 0))
    try:
        port = listener.getsockname()[1]
        a, b = socket.socketpair()
        b.close()  # the "server" side is gone: a reads EOF
        pool.give("127.0.0.1", port, a)
        sock, pooled = pool.take("127.0.0.1", port, 5.0)
        try:
            assert not pooled and sock is not a
            assert a.fileno() == -1
        finally:
            sock.close()
    finally:
        listener.close()


def test_closing_the_server_closes_its_connections_and_joins_its_threads():
    import threading

    from monarch.rdma._tcp import RDMAServer

    before = set(threading.enumerate())
    server = RDMAServer("127.0.0.1", lambda region, key: None)
    clients = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(3)]
    try:
        for sock in clients:  # an answer proves the connection has its serving thread
            sock.sendall(_REQ.pack(_MAGIC, 99, 0, 0, 0, 0))
            status, length = _REP.unpack(_recv_exact(sock, _REP.size))
            assert status != 0 and b"unknown" in _recv_exact(sock, length)
        threads = [t for t in set(threading.enumerate()) - before if t.name == "monarch-rdma-conn"]
        assert len(threads) == 3
        server.close(timeout_s=10)
        assert not any(t.is_alive() for t in threads)
        for sock in clients:
            assert _closed_by_peer(sock)
    finally:
        for sock in clients:
            sock.close()
