"""Issue 9 faults reproduced through the names the router still uses (``channel.Connection``,
``Listener``, ``dial``). These tests import nothing newer, so they also run against the code from
before the transport rebuild, where each of them fails (checked)."""

from __future__ import annotations

import asyncio
import gc
import os
import socket
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from monarch._core.errors import ConnectError
from monarch._transport.channel import Connection, Listener, dial
from monarch._transport.frame import Envelope, frame_iov


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    lp = asyncio.new_event_loop()
    t = threading.Thread(target=lp.run_forever, daemon=True)
    t.start()
    yield lp
    lp.call_soon_threadsafe(lp.stop)
    t.join(10)


def _on(loop: asyncio.AbstractEventLoop, fn: Callable[[], Any]) -> Any:
    async def run() -> Any:
        return fn()

    return asyncio.run_coroutine_threadsafe(run(), loop).result(10)


def _conn(loop: asyncio.AbstractEventLoop, sock: socket.socket, on_frame: Any) -> Any:
    def make() -> Any:
        c = Connection(sock, loop, on_frame, lambda *a: None, max_envelope_bytes=1 << 20, max_frame_bytes=1 << 40, peer="p")
        c.start_reading()
        return c

    return _on(loop, make)


def test_blocking_dial_refuses_a_listener_that_cannot_prove_the_token() -> None:
    srv = socket.create_server(("127.0.0.1", 0))

    def fake() -> None:  # knows no token: sends a random challenge, then random "proof"
        c, _ = srv.accept()
        with c:
            c.settimeout(5)
            try:
                c.sendall(os.urandom(40))
                c.recv(100)
                c.sendall(os.urandom(32))
                c.recv(1)
            except OSError:
                pass

    t = threading.Thread(target=fake, daemon=True)
    t.start()
    try:
        with pytest.raises(ConnectError):
            dial(f"tcp:127.0.0.1:{srv.getsockname()[1]}", b"secret", timeout_s=2).close()
    finally:
        t.join(10)
        srv.close()


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_idle_accepted_unix_connections_hold_no_receive_buffer(loop: asyncio.AbstractEventLoop, tmp_path: Any) -> None:
    n = 1000
    conns: list[Any] = []
    cond = threading.Condition()

    def accepted(sock: socket.socket, peer: str) -> None:
        c = Connection(sock, loop, lambda *a: None, lambda *a: None, max_envelope_bytes=1 << 20, max_frame_bytes=1 << 30, peer=peer)
        c.start_reading()
        with cond:
            conns.append(c)
            cond.notify_all()

    lst = _on(loop, lambda: Listener(loop, accepted, addr=f"unix:{tmp_path}/l.sock"))
    socks: list[socket.socket] = []
    try:
        gc.collect()
        before = _rss_bytes()
        for _ in range(n):
            s = socket.socket(socket.AF_UNIX)
            s.connect(f"{tmp_path}/l.sock")
            socks.append(s)
        with cond:
            assert cond.wait_for(lambda: len(conns) == n, 30)
        per_conn = (_rss_bytes() - before) / n
        assert per_conn < 48 * 1024, f"{per_conn / 1024:.0f} KiB per idle connection"
    finally:
        for s in socks:
            s.close()
        _on(loop, lst.close)


def _memfd_mib() -> int:
    total = 0
    with open("/proc/self/maps") as f:
        for line in f:
            if "monarch-shm" in line:
                lo, hi = line.split()[0].split("-")
                total += int(hi, 16) - int(lo, 16)
    return total >> 20


def test_a_large_transfer_leaves_no_shared_memory_pinned(loop: asyncio.AbstractEventLoop) -> None:
    np = pytest.importorskip("numpy")
    a, b = socket.socketpair(socket.AF_UNIX)
    got: list[Any] = []
    pong = threading.Event()
    conns: dict[str, Any] = {}

    def on_b(c: Any, env: Any, bufs: list[memoryview]) -> None:
        if env.kind == "hello":
            pong.set()
            return
        got.append(bytes(bufs[0][:1]))
        del bufs[:]  # drop the view: the receiver frees the segment (on its loop, soon)
        # then ask the sender to answer, so its answer comes after it handled the free
        loop.call_soon(lambda: c.send(frame_iov(_kind("port"), [])))

    def on_a(c: Any, env: Any, bufs: list[memoryview]) -> None:
        c.send(frame_iov(_kind("hello"), []))

    conns["a"] = _conn(loop, a, on_a)
    conns["b"] = _conn(loop, b, on_b)
    big = np.ones(257 << 20, dtype=np.uint8)
    env = Envelope()
    env.kind = "port"
    env.buffers = [big.nbytes]
    ids = conns["a"].share([big])
    if not ids:
        pytest.skip("no shared memory on this platform")
    env.shm = ids
    conns["a"].send(frame_iov(env.to_bytes(), []))
    del big
    assert pong.wait(30)
    assert got == [b"\x01"]
    pinned = _on(loop, _memfd_mib)
    assert pinned == 0, f"{pinned} MiB of shared memory still mapped after the transfer"


def _kind(kind: str) -> bytes:
    e = Envelope()
    e.kind = kind
    return bytes(e.to_bytes())


_HOSTILE = textwrap.dedent(
    """
    import array, os, select, socket, sys, time
    from monarch._transport.frame import Envelope, frame_iov
    try:
        from monarch._transport.messages import Kind
        from monarch._transport.shm import segment_frame
        announce = segment_frame(Kind.SHM_SEGMENT, 1, 2 << 20)
    except ImportError:  # the old wire format: a control envelope, port/replyPort as segment fields
        e = Envelope(); e.kind = "control"; e.endpoint = "monarch.shm.segment"; e.port = 1; e.replyPort = 2 << 20
        announce = bytes(e.to_bytes())
    fd = os.memfd_create("monarch-shm-evil", 0)
    os.ftruncate(fd, 2 << 20)
    s = socket.socket(socket.AF_UNIX)
    s.connect(sys.argv[1])
    s.settimeout(20)
    def receiver_mapped():
        with open(f"/proc/{os.getppid()}/maps") as f:
            return "monarch-shm-evil" in f.read()
    try:
        s.sendmsg([announce], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))])
        deadline = time.monotonic() + 20
        # wait until the receiver mapped the segment, or refused it (closed the link)
        while not receiver_mapped() and time.monotonic() < deadline:
            if select.select([s], [], [], 0.005)[0]:
                sys.exit(0)  # refused before mapping
        os.ftruncate(fd, 0)  # touching the mapping now faults (SIGBUS)
        env = Envelope(); env.kind = "port"; env.buffers = [2 << 20]; env.shm = [1]
        s.sendall(b"".join(bytes(memoryview(b)) for b in frame_iov(env.to_bytes(), [])))
        s.recv(1)  # until the receiver closes the link (or dies)
    except OSError:
        pass
    """
)

_RECEIVER = textwrap.dedent(
    """
    import asyncio, subprocess, sys, tempfile, threading
    from monarch._transport.channel import Connection, Listener
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    d = tempfile.mkdtemp()
    def on_frame(c, env, bufs):
        print("touched", sum(bytes(b[:4096])[0] for b in bufs), flush=True)
    def accepted(sock, peer):
        Connection(sock, loop, on_frame, lambda c, e: print("closed:", e, flush=True),
                   max_envelope_bytes=1 << 20, max_frame_bytes=1 << 30, peer=peer).start_reading()
    async def listen():
        return Listener(loop, accepted, addr=f"unix:{d}/l.sock")
    asyncio.run_coroutine_threadsafe(listen(), loop).result(5)
    subprocess.run([sys.executable, "-c", sys.argv[1], f"{d}/l.sock"], timeout=60)
    print("receiver alive", flush=True)
    """
)


def test_a_peer_shrinking_an_announced_memfd_does_not_kill_the_receiver() -> None:
    pytest.importorskip("numpy")
    p = subprocess.run([sys.executable, "-c", _RECEIVER, _HOSTILE], capture_output=True, text=True, timeout=90)
    assert p.returncode == 0, f"receiver died (status {p.returncode}): {p.stderr[-400:]}"
    assert "receiver alive" in p.stdout and "closed:" in p.stdout and "touched" not in p.stdout, p.stdout
