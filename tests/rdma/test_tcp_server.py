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
