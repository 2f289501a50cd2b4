"""Shared memory between Unix links: bounded pools, released segments, sealed memfds, and a
hostile peer that shrinks what it announced."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from typing import Any

import pytest
from monarch._core.errors import ProtocolError
from monarch._transport import shm
from monarch._transport.frame import Envelope, frame_iov

from tests.runtime.test_transport_sockets import Loop

pytestmark = pytest.mark.skipif(not shm.available(), reason="needs memfd sealing and numpy")

MiB = 1 << 20


@pytest.fixture
def lp() -> Iterator[Loop]:
    loop = Loop()
    yield loop
    loop.stop()


def _send_shared(link: Any, bufs: list[Any]) -> list[int] | None:
    """Send one frame whose large buffers go through shared memory, as the router does."""
    env = Envelope.new_message()
    env.kind = "port"
    env.buffers = [memoryview(b).nbytes for b in bufs]
    ids = link.share(bufs)
    env.shm = ids or ()
    inline = [b for b, s in zip(bufs, ids) if not s] if ids else bufs
    link.send(frame_iov(env.to_bytes(), inline))
    return ids


def _memfd_mappings() -> int:
    with open("/proc/self/maps") as f:
        return sum(1 for line in f if "monarch-shm" in line)


def _pair(lp: Loop, tmp_path: Any, **settings: Any) -> tuple[Any, Any, Any, Any]:
    server, client = lp.transport(**settings), lp.transport(**settings)
    lst = lp.call(lambda: server.listen(f"unix:{tmp_path}/s.sock", lp.on_link))
    link = client.connect(lst.address)
    link.send(frame_iov(Envelope().to_bytes(), []))  # a first frame: the link is up when it arrives
    assert lp.wait(lambda: len(lp.frames) == 1 and link.sock is not None)
    lp.frames.clear()
    return server, client, link, lp.links[0]


def test_a_large_segment_is_freed_on_both_sides_once_the_receiver_drops_its_view(lp: Loop, tmp_path: Any) -> None:
    import numpy as np

    server, client, link, _ = _pair(lp, tmp_path, shm_keep_max_bytes=64 * MiB)
    big = np.full(100 * MiB, 7, dtype=np.uint8)
    ids = _send_shared(link, [big])
    assert ids and ids[0]
    assert lp.wait(lambda: len(lp.frames) == 1)
    # the receiver's view: Loop.on_frame copied it, so no view is left once the frame is gone
    assert lp.frames[0][2][0][:3] == b"\x07\x07\x07"
    lp.frames.clear()
    gc.collect()
    pool, table = link._shm_tx, lp.links[0]._decoder.segments
    assert lp.wait(lambda: pool.held_bytes == 0 and table.mapped_bytes == 0, timeout_s=10)
    assert _memfd_mappings() == 0, "a released segment is still mapped"
    assert client.shm_budget.used_bytes == 0
    lp.call(client.close)
    lp.call(server.close)


def test_small_segments_are_reused_and_the_idle_pool_is_capped(lp: Loop, tmp_path: Any) -> None:
    server, client, link, _ = _pair(lp, tmp_path, shm_pool_keep_bytes=4 * MiB)
    for _ in range(5):
        _send_shared(link, [bytes(3 * MiB)])  # a 4 MiB size class
        assert lp.wait(lambda: len(lp.frames) == 1)
        lp.frames.clear()
        gc.collect()
        assert lp.wait(lambda: link._shm_tx.free_bytes == 4 * MiB)
    assert link._shm_tx.segment_count() == 1  # reused, not one per message
    # two in flight at once: the second is retired on release (the idle pool holds 4 MiB)
    _send_shared(link, [bytes(3 * MiB), bytes(3 * MiB)])
    assert lp.wait(lambda: len(lp.frames) == 1)
    lp.frames.clear()
    gc.collect()
    assert lp.wait(lambda: link._shm_tx.held_bytes == 4 * MiB and link._shm_tx.segment_count() == 1)
    table = lp.links[0]._decoder.segments
    assert lp.wait(lambda: table.mapped_bytes == 4 * MiB)
    lp.call(client.close)
    lp.call(server.close)


def test_a_link_never_holds_more_shared_memory_than_its_cap(lp: Loop, tmp_path: Any) -> None:
    server, client, link, _ = _pair(lp, tmp_path, shm_link_max_bytes=8 * MiB)
    ids = _send_shared(link, [bytes(3 * MiB), bytes(3 * MiB), bytes(3 * MiB)])
    assert ids is not None and ids.count(0) == 1  # the third went inline
    assert link._shm_tx.held_bytes <= 8 * MiB
    assert lp.wait(lambda: len(lp.frames) == 1)
    assert [len(b) for b in lp.frames[0][2]] == [3 * MiB] * 3
    lp.call(client.close)
    lp.call(server.close)


def test_the_transport_total_caps_every_link_together(lp: Loop, tmp_path: Any) -> None:
    server, client, link, _ = _pair(lp, tmp_path, shm_total_max_bytes=4 * MiB)
    ids = _send_shared(link, [bytes(3 * MiB), bytes(3 * MiB)])
    assert ids == [ids[0], 0] and ids[0]
    assert client.shm_budget.used_bytes == 4 * MiB
    lp.call(client.close)
    assert client.shm_budget.used_bytes == 0
    lp.call(server.close)


def test_shm_control_frames_never_reach_the_frame_handler(lp: Loop, tmp_path: Any) -> None:
    server, client, link, _ = _pair(lp, tmp_path)
    _send_shared(link, [bytes(2 * MiB)])
    assert lp.wait(lambda: len(lp.frames) == 1)
    assert lp.frames[0][1].kind == "port"
    lp.frames.clear()
    gc.collect()
    assert lp.wait(lambda: link._shm_tx.free_bytes > 0)  # the shmFree came back
    assert not lp.frames
    lp.call(client.close)
    lp.call(server.close)


def test_segments_are_sealed_against_shrinking_and_growing() -> None:
    import fcntl

    seg = shm._Segment(1, 2 * MiB)
    try:
        seals = fcntl.fcntl(seg.fd, fcntl.F_GET_SEALS)
        assert seals & fcntl.F_SEAL_SHRINK and seals & fcntl.F_SEAL_GROW
        with pytest.raises(PermissionError):
            os.ftruncate(seg.fd, 0)
    finally:
        seg.close()


_HOSTILE = textwrap.dedent(
    """
    import array, os, socket, sys
    from monarch._transport.frame import Envelope, frame_iov
    from monarch._transport.shm import segment_frame
    from monarch._transport.messages import Kind

    size = 2 << 20
    fd = os.memfd_create("monarch-shm-evil", os.MFD_CLOEXEC)  # not sealed
    os.ftruncate(fd, size)
    s = socket.socket(socket.AF_UNIX)
    s.connect(sys.argv[1])
    try:
        s.sendmsg([segment_frame(Kind.SHM_SEGMENT, 1, size)],
                  [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))])
        os.ftruncate(fd, 0)  # a view mapped before this would now fault with SIGBUS
        env = Envelope()
        env.kind = "port"
        env.buffers = [size]
        env.shm = [1]
        s.sendall(b"".join(bytes(memoryview(b)) for b in frame_iov(env.to_bytes(), [])))
        s.settimeout(10)
        print("closed" if s.recv(1) == b"" else "open", flush=True)
    except ConnectionError:
        print("closed", flush=True)
    """
)


def test_a_peer_that_shrinks_an_announced_memfd_is_refused_without_sigbus(lp: Loop, tmp_path: Any) -> None:
    server = lp.transport(token=None)  # no token: Unix peers reach the frame path unauthenticated
    lst = lp.call(lambda: server.listen(f"unix:{tmp_path}/s.sock", lp.on_link))
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOSTILE, lst.address[5:]], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 0, err
    assert out.strip() == "closed"
    assert lp.wait(lambda: len(lp.closes) == 1)
    exc = lp.closes[0][1]
    # refused at the announcement: unsealed, or (if the shrink came first) smaller than announced
    assert isinstance(exc, ProtocolError) and ("not sealed" in str(exc) or "announced" in str(exc))
    assert not lp.frames  # the frame naming the segment was never handed out
    lp.call(server.close)


@pytest.mark.parametrize("how", ["released", "evicted"])
def test_a_retired_segment_is_announced_gone_before_its_room_can_be_reused(how: str) -> None:
    # the cap is one segment: a sender thread that saw the room freed before the retirement was
    # queued announced the next segment first, and the receiver (still mapping the old one,
    # over its cap) closed the link (a 1 GiB call followed by a 1 GiB echo)
    seen: list[tuple[int, int]] = []
    pool: Any = None

    def on_retire(seg_id: int) -> None:
        seen.append((seg_id, pool.held_bytes))

    size = 4 * MiB
    keep = size if how == "evicted" else MiB  # evicted: kept idle, then pushed out by another size
    pool = shm.SegmentPool(
        shm.ShmBudget(64 * MiB), link_max_bytes=size, keep_max_bytes=keep, pool_keep_bytes=keep, min_bytes=MiB,
        on_retire=on_retire,
    )
    try:
        got = pool.acquire(size)
        assert got is not None
        seg, new = got
        assert new
        pool.release(seg.id)
        if how == "evicted":
            assert not seen  # kept for reuse
            other = pool.acquire(2 * MiB)  # another size class: the idle one must make room
            assert other is not None and other[1]
        assert seen == [(seg.id, size)], "the room was given back before the retirement was sent"
    finally:
        pool.close()
