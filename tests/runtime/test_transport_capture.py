"""Frame capture (``runtime/_transport/capture.py``) on real Unix sockets: the files hold exactly
the bytes on the wire, on both ends, whatever way the reader received them; off, nothing of it
runs."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import pytest
from monarch._transport.frame import Envelope, frame_iov

from tests.runtime.test_transport_sockets import Loop


@pytest.fixture
def lp() -> Any:
    loop = Loop()
    yield loop
    loop.stop()


def _frame(i: int, bufs: list[bytes], shm: list[int] | None = None) -> tuple[bytes, list[Any]]:
    env = Envelope.new_message()
    env.kind = "call"
    env.endpoint = f"e{i}"
    env.seq = i + 1
    env.buffers = [len(b) for b in bufs]
    if shm:
        env.shm = shm
    raw = bytes(env.to_bytes())
    inline = [b for b, s in zip(bufs, shm or [0] * len(bufs), strict=True) if not s]
    return raw, frame_iov(raw, inline)


def _wire(iov: list[Any]) -> bytes:
    return b"".join(bytes(memoryview(b)) for b in iov)


def _folder(root: Path) -> Path:
    return root / f"{socket.gethostname()}-{os.getpid()}"


def _captured(folder: Path, direction: str) -> list[tuple[bytes, bytes | None]]:
    """``(envelope bytes, buffers file bytes or None)`` of each captured ``call``, in order."""
    out = []
    for p in sorted(folder.glob(f"*-{direction}-call-link*.capnp")):
        side = p.with_suffix(".buffers")
        out.append((p.read_bytes(), side.read_bytes() if side.exists() else None))
    return out


def test_captured_frames_are_the_wire_bytes_on_both_ends(lp: Loop, tmp_path: Path) -> None:
    root = tmp_path / "frames"
    server = lp.transport(token=None, capture_frames_dir=str(root), shm_enabled=False)
    client = lp.transport(token=None, capture_frames_dir=str(root), shm_enabled=False)
    lst = lp.call(lambda: server.listen(f"unix:{tmp_path}/s.sock", lp.on_link))
    link = client.connect(lst.address)
    sizes = [[], [5], [3, 4096], [700_000], [1, 2, 3]]  # 700 kB: received straight into its buffer
    frames = [_frame(i, [bytes([i + 1]) * n for n in s]) for i, s in enumerate(sizes)]
    frames += [_frame(100 + i, [b"x" * (1 + i % 9)]) for i in range(2000)]  # a burst: many per read
    for _, iov in frames:
        link.send(iov)
    assert lp.wait(lambda: len(lp.frames) == len(frames), timeout_s=60)
    lp.call(client.close)
    lp.call(server.close)

    folder = _folder(root)
    assert (
        "pid" in (folder / "process.txt").read_text()
        and f"listen {lst.address}" in (folder / "process.txt").read_text()
    )
    links = (folder / "links.txt").read_text()
    assert f"outgoing {lst.address}" in links and "accepted unix peer" in links
    expected = [(raw, _wire(iov[1:]) or None) for raw, iov in frames]
    assert _captured(folder, "send") == expected
    assert _captured(folder, "recv") == expected
    # numbered in capture order: the sends of one link in the order they were written
    names = sorted(p.name for p in folder.glob("*-send-call-*.capnp"))
    assert [n.split("-")[0] for n in names] == sorted(n.split("-")[0] for n in names)


def test_buffers_in_shared_memory_are_not_in_the_capture(lp: Loop, tmp_path: Path) -> None:
    root = tmp_path / "frames"
    server = lp.transport(token=None, capture_frames_dir=str(root), shm_min_bytes=1 << 16)
    client = lp.transport(token=None, capture_frames_dir=str(root), shm_min_bytes=1 << 16)
    lst = lp.call(lambda: server.listen(f"unix:{tmp_path}/s.sock", lp.on_link))
    link = client.connect(lst.address)
    assert lp.wait(lambda: link.fd >= 0 and not getattr(link, "_connecting", True))
    bufs = [b"small", b"L" * (1 << 17)]
    shm = link.share(bufs)
    if shm is None:
        pytest.skip("no shared memory on this platform (memfd or numpy missing)")
    raw, iov = _frame(0, bufs, shm)
    link.send(iov)
    assert lp.wait(lambda: len(lp.frames) == 1)
    assert bytes(lp.frames[0][2][1]) == bufs[1]
    lp.call(client.close)
    lp.call(server.close)

    folder = _folder(root)
    inline = _wire(iov[1:])
    assert inline == b"small" + bytes(3)
    assert _captured(folder, "send") == [(raw, inline)]
    assert _captured(folder, "recv") == [(raw, inline)]
    # the segment's announcement travels with its descriptor: only the receiver captures it
    assert list(folder.glob("*-recv-shmSegment-*.capnp")) and not list(
        folder.glob("*-send-shmSegment-*")
    )


def test_capture_off_leaves_links_untouched(lp: Loop, tmp_path: Path) -> None:
    transport = lp.transport(token=None)
    lst = lp.call(lambda: transport.listen(f"unix:{tmp_path}/s.sock", lp.on_link))
    link = transport.connect(lst.address)
    assert transport.capture is None
    # the class's own methods: no wrapper, no per-frame test
    assert "send" not in vars(link)
    assert not {"feed", "direct_target", "advance_direct"} & set(vars(link._decoder))
    lp.call(transport.close)
    assert not list(tmp_path.glob("*/*.capnp"))
