"""Shared-memory segments for large out-of-band buffers between processes of one host.

Over a Unix socket, a buffer of ``SHM_MIN_BYTES`` or more is not written into the stream: the
sender copies it into a ``memfd`` segment that the receiver has mapped (its file descriptor went
over the socket once, with ``SCM_RIGHTS``, in an announcement frame), and the envelope's ``shm``
list names the segment. The receiver hands out a view of the segment (no copy, no socket
transfer); when the last view is gone it sends the segment id back on the same connection and
the sender reuses the segment. Each direction of a 16 MiB round trip then costs one ``memcpy``
into memory that is already mapped and faulted in, instead of two kernel copies through the
socket and page faults on fresh receive buffers.

Both ends are per connection: :class:`SegmentPool` (sending side) and :class:`SegmentTable`
(receiving side). Control frames (``kind=control``, endpoint ``monarch.shm.*``) never leave the
transport layer.
"""

from __future__ import annotations

import mmap
import os
import threading
import weakref
from collections import deque
from collections.abc import Callable

from .._core.errors import ProtocolError

__all__ = ["SHM_FREE", "SHM_MIN_BYTES", "SHM_SEGMENT", "SegmentPool", "SegmentTable", "available"]

SHM_MIN_BYTES = 1 << 20
SHM_SEGMENT = "monarch.shm.segment"  # announcement: port = id, replyPort = size; fd attached
SHM_FREE = "monarch.shm.free"  # the receiver is done with segment `port`
_MAX_POOL_BYTES = 1 << 30  # per connection and direction; beyond it buffers go inline
_POPULATE = getattr(mmap, "MAP_POPULATE", 0)


_AVAILABLE: bool | None = None


def available() -> bool:
    """Whether this platform has ``memfd_create`` (Linux) and numpy (for the views), without
    importing numpy (it costs ~0.1 s; the first view imports it)."""
    global _AVAILABLE
    if _AVAILABLE is None:
        import importlib.util

        _AVAILABLE = hasattr(os, "memfd_create") and importlib.util.find_spec("numpy") is not None
    return _AVAILABLE


class _Segment:
    __slots__ = ("fd", "id", "mm", "size")

    def __init__(self, seg_id: int, size: int) -> None:
        self.id = seg_id
        self.size = size
        self.fd = os.memfd_create(f"monarch-shm-{seg_id}", os.MFD_CLOEXEC)  # type: ignore[attr-defined,unused-ignore]  # Linux only; see available()
        try:
            os.ftruncate(self.fd, size)
            self.mm = mmap.mmap(self.fd, size, flags=mmap.MAP_SHARED | _POPULATE)
        except BaseException:
            os.close(self.fd)
            raise

    def close(self) -> None:
        try:
            self.mm.close()
        except BufferError:
            pass
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class SegmentPool:
    """The sending side: segments this process filled for the peer, by power-of-two size."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._free: dict[int, list[_Segment]] = {}
        self._busy: dict[int, _Segment] = {}
        self._known: dict[int, _Segment] = {}
        self._next_id = 1
        self._bytes = 0
        self.closed = False

    def acquire(self, nbytes: int) -> tuple[_Segment, bool] | None:
        """A segment of at least ``nbytes`` marked busy, and whether it is new (to announce);
        None when the pool is full."""
        size = max(SHM_MIN_BYTES, 1 << (nbytes - 1).bit_length())
        with self._lock:
            if self.closed:
                return None
            lst = self._free.get(size)
            if lst:
                seg = lst.pop()
                self._busy[seg.id] = seg
                return seg, False
            if self._bytes + size > _MAX_POOL_BYTES:
                return None
            seg_id = self._next_id
            self._next_id += 1
            self._bytes += size
        try:
            seg = _Segment(seg_id, size)
        except OSError:
            with self._lock:
                self._bytes -= size
            return None
        with self._lock:
            self._known[seg.id] = seg
            self._busy[seg.id] = seg
        return seg, True

    def release(self, seg_id: int) -> None:
        """The receiver is done with ``seg_id`` (or it was never announced): reuse it."""
        with self._lock:
            seg = self._busy.pop(seg_id, None)
            if seg is None or self.closed:
                return  # unknown or already free: ignore (a confused peer cannot corrupt us)
            self._free.setdefault(seg.size, []).append(seg)

    def forget(self, seg_id: int) -> None:
        """Drop a segment whose announcement could not be sent."""
        with self._lock:
            seg = self._busy.pop(seg_id, None)
            self._known.pop(seg_id, None)
            if seg is not None:
                self._bytes -= seg.size
        if seg is not None:
            seg.close()

    def close(self) -> None:
        with self._lock:
            self.closed = True
            self._free.clear()
            self._busy.clear()
            known = list(self._known.values())
            self._known.clear()
        for seg in known:  # the peer's mappings are its own; ours can go
            seg.close()


class SegmentTable:
    """The receiving side: segments the peer announced, mapped once, lent out as views.

    Args:
        on_free: called (from any thread, possibly inside garbage collection) with a segment
            id when the last view of it is gone; it must only schedule work, never block.
    """

    def __init__(self, on_free: Callable[[int], None]) -> None:
        self.fds: deque[int] = deque()  # received with SCM_RIGHTS, not yet claimed
        self._maps: dict[int, mmap.mmap] = {}
        self._on_free = on_free

    def announce(self, seg_id: int, size: int) -> None:
        """Map the next received descriptor as segment ``seg_id`` of ``size`` bytes.

        Raises:
            ProtocolError: no descriptor came with the announcement, or it cannot be mapped.
        """
        if not self.fds:
            raise ProtocolError("shared-memory segment announced without a file descriptor")
        fd = self.fds.popleft()
        try:
            self._maps[seg_id] = mmap.mmap(fd, size, flags=mmap.MAP_SHARED | _POPULATE)
        except (OSError, ValueError, OverflowError) as exc:
            raise ProtocolError(f"cannot map shared-memory segment {seg_id}: {exc}") from None
        finally:
            os.close(fd)

    def view(self, seg_id: int, nbytes: int) -> memoryview:
        """A writable view of the first ``nbytes`` of segment ``seg_id``, lent until it is
        garbage-collected.

        Raises:
            ProtocolError: unknown segment, or ``nbytes`` larger than it.
        """
        import numpy as np

        mm = self._maps.get(seg_id)
        if mm is None or nbytes > len(mm):
            raise ProtocolError(f"frame refers to unknown or too small shared-memory segment {seg_id}")
        arr = np.frombuffer(mm, dtype=np.uint8, count=nbytes)
        weakref.finalize(arr, self._on_free, seg_id)
        return memoryview(arr)  # type: ignore[arg-type]  # ndarray implements the buffer protocol; numpy stubs lack __buffer__

    def close(self) -> None:
        while self.fds:
            os.close(self.fds.popleft())
        self._maps.clear()  # mappings live on while views of them do


def take_fds(ancdata: list[tuple[int, int, bytes]], out: deque[int]) -> None:
    """Append the descriptors of ``SCM_RIGHTS`` ancillary data to ``out``."""
    import array
    import socket

    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds = array.array("i")
            fds.frombytes(data[: len(data) - (len(data) % fds.itemsize)])
            out.extend(fds)

