"""Shared-memory segments for large out-of-band buffers between processes of one host.

Over a Unix socket, a buffer of ``shm_min_bytes`` or more is not written into the stream: the
sender copies it into a sealed ``memfd`` segment that the receiver has mapped, and the envelope's
``shm`` list names the segment. The receiver hands out a view of the segment (no copy); when the
last view is gone it says so and the sender may reuse the segment. Each direction of a 16 MiB
round trip then costs one ``memcpy`` into memory that is already mapped and faulted in.

Three transport frames carry the protocol (``Kind.SHM_*`` in ``envelope.capnp``, with the
``segment`` struct naming id and size); they never leave this layer:

- ``shmSegment`` (sender -> receiver, the memfd attached with ``SCM_RIGHTS``): map segment ``id``
  of ``size`` bytes. The receiver checks the descriptor before mapping: its size is at least
  ``size`` and it is sealed against shrinking and growing (``F_SEAL_SHRINK | F_SEAL_GROW``), so a
  hostile peer cannot truncate it under the receiver's views (which would be ``SIGBUS``).
- ``shmFree`` (receiver -> sender): no views of segment ``id`` are left.
- ``shmRetire`` (sender -> receiver): the sender dropped segment ``id``; unmap it.

Memory is bounded on both sides: a link holds at most ``shm_link_max_bytes`` per direction, all
links of a transport at most ``shm_total_max_bytes`` for sending; segments larger than
``shm_keep_max_bytes`` are retired right after use, and at most ``shm_pool_keep_bytes`` of idle
segments are kept per link.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import threading
import weakref
from collections import deque
from collections.abc import Callable

from .._core.errors import ProtocolError
from .envelope import Envelope
from .messages import Kind

__all__ = ["SegmentPool", "SegmentTable", "ShmBudget", "available", "segment_frame", "take_fds"]

_POPULATE = getattr(mmap, "MAP_POPULATE", 0)
_PAGE = mmap.PAGESIZE
_SEALS = getattr(fcntl, "F_SEAL_SHRINK", 0) | getattr(fcntl, "F_SEAL_GROW", 0)
_AVAILABLE: bool | None = None


def available() -> bool:
    """Whether this platform has sealable ``memfd`` segments (Linux) and numpy (for the views),
    without importing numpy (it costs ~0.1 s; the first view imports it)."""
    global _AVAILABLE
    if _AVAILABLE is None:
        import importlib.util

        _AVAILABLE = (
            hasattr(os, "memfd_create")
            and hasattr(os, "MFD_ALLOW_SEALING")
            and hasattr(fcntl, "F_ADD_SEALS")
            and importlib.util.find_spec("numpy") is not None
        )
    return _AVAILABLE


def segment_frame(kind: Kind, seg_id: int, size: int = 0) -> bytes:
    """The encoded transport frame ``kind`` (one of ``Kind.SHM_*``) naming segment ``seg_id``."""
    env = Envelope()
    env.kind = kind.value
    seg = env.init("segment")
    seg.id = seg_id
    seg.size = size
    return bytes(env.to_bytes())


class ShmBudget:
    """Shared memory all links of one transport hold for sending, in bytes (thread-safe)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.used_bytes = 0
        self._lock = threading.Lock()

    def take(self, nbytes: int) -> bool:
        with self._lock:
            if self.used_bytes + nbytes > self.max_bytes:
                return False
            self.used_bytes += nbytes
            return True

    def give(self, nbytes: int) -> None:
        with self._lock:
            self.used_bytes -= nbytes

    def __repr__(self) -> str:
        return f"<ShmBudget used={self.used_bytes} max={self.max_bytes}>"


class _Segment:
    __slots__ = ("fd", "id", "mm", "size")

    def __init__(self, seg_id: int, size: int) -> None:
        self.id = seg_id
        self.size = size
        flags = os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING  # type: ignore[attr-defined,unused-ignore]  # Linux only; see available()
        self.fd = os.memfd_create(f"monarch-shm-{seg_id}", flags)  # type: ignore[attr-defined,unused-ignore]  # Linux only
        try:
            os.ftruncate(self.fd, size)
            fcntl.fcntl(self.fd, fcntl.F_ADD_SEALS, _SEALS | fcntl.F_SEAL_SEAL)
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
    """The sending side of one link: segments this process fills for the peer.

    Args:
        budget: the transport-wide sending budget this pool draws from.
        link_max_bytes: segments (in use or idle) this pool may hold.
        keep_max_bytes: segments larger than this are retired once released.
        pool_keep_bytes: idle segments kept for reuse; beyond it released ones are retired.
        min_bytes: the smallest segment.
        on_retire: called with a segment id, under the pool's lock (any thread), when a
            segment the peer mapped is dropped; it must queue ``shmRetire`` on the link
            without blocking and without calling back into the pool.
    """

    def __init__(
        self,
        budget: ShmBudget,
        *,
        link_max_bytes: int,
        keep_max_bytes: int,
        pool_keep_bytes: int,
        min_bytes: int,
        on_retire: Callable[[int], None],
    ) -> None:
        self._budget = budget
        self._link_max = link_max_bytes
        self._keep_max = keep_max_bytes
        self._pool_keep = pool_keep_bytes
        self._min = min_bytes
        self._on_retire = on_retire
        self._lock = threading.Lock()
        self._free: dict[int, list[_Segment]] = {}
        self._busy: dict[int, _Segment] = {}
        self._next_id = 1
        self.held_bytes = 0  # busy + free
        self.free_bytes = 0
        self.closed = False

    def _size_for(self, nbytes: int) -> int:
        if nbytes <= self._keep_max:
            return max(self._min, 1 << (nbytes - 1).bit_length())  # reusable size classes
        return (nbytes + _PAGE - 1) // _PAGE * _PAGE  # used once: no rounding waste

    def acquire(self, nbytes: int) -> tuple[_Segment, bool] | None:
        """A segment of at least ``nbytes`` marked busy, and whether it is new (to announce);
        None when the caps leave no room (the buffer then goes inline)."""
        size = self._size_for(nbytes)
        evicted: list[_Segment] = []
        with self._lock:
            if self.closed:
                return None
            lst = self._free.get(size)
            if lst:
                seg = lst.pop()
                self.free_bytes -= size
                self._busy[seg.id] = seg
                return seg, False
            # make room by dropping idle segments of other sizes
            while self.held_bytes + size > self._link_max and self.free_bytes:
                evicted.append(self._pop_free_locked())
            ok = self.held_bytes + size <= self._link_max and self._budget.take(size)
            while not ok and self.free_bytes:
                evicted.append(self._pop_free_locked())
                ok = self._budget.take(size)
            if ok:
                seg_id = self._next_id
                self._next_id += 1
                self.held_bytes += size
        self._drop(evicted)
        if not ok:
            return None
        try:
            seg = _Segment(seg_id, size)
        except OSError:
            with self._lock:
                self.held_bytes -= size
            self._budget.give(size)
            return None
        with self._lock:
            closed_meanwhile = self._is_closed()
            if not closed_meanwhile:
                self._busy[seg.id] = seg
        if closed_meanwhile:
            seg.close()
            self._budget.give(size)
            return None
        return seg, True

    def segment_count(self) -> int:
        """Segments held (in use or idle)."""
        with self._lock:
            return len(self._busy) + sum(len(lst) for lst in self._free.values())

    def _is_closed(self) -> bool:
        return self.closed  # a call, so that mypy does not keep an earlier narrowing of it

    def _pop_free_locked(self) -> _Segment:
        size = next(s for s, lst in self._free.items() if lst)
        seg = self._free[size].pop()
        self.free_bytes -= size
        self._retire_locked(seg)
        return seg

    def _retire_locked(self, seg: _Segment) -> None:
        # The retirement is queued on the link BEFORE the room is given back: a segment that
        # another thread then creates is announced after it, so the receiver has unmapped this
        # one first and never sees more than the link's cap mapped (it closes the link if so).
        self._on_retire(seg.id)
        self.held_bytes -= seg.size

    def _drop(self, segs: list[_Segment]) -> None:
        """Free our side of retired segments (their retirement was already sent)."""
        for seg in segs:
            seg.close()
            self._budget.give(seg.size)

    def release(self, seg_id: int) -> None:
        """The receiver is done with ``seg_id``: keep it for reuse or retire it."""
        with self._lock:
            seg = self._busy.pop(seg_id, None)
            if seg is None or self.closed:
                return  # unknown or already free: ignore (a confused peer cannot corrupt us)
            if seg.size <= self._keep_max and self.free_bytes + seg.size <= self._pool_keep:
                self._free.setdefault(seg.size, []).append(seg)
                self.free_bytes += seg.size
                return
            self._retire_locked(seg)
        self._drop([seg])

    def forget(self, seg_id: int) -> None:
        """Drop a segment whose announcement could not be sent (the peer never mapped it)."""
        with self._lock:
            seg = self._busy.pop(seg_id, None)
            if seg is not None:
                self.held_bytes -= seg.size
        if seg is not None:
            seg.close()
            self._budget.give(seg.size)

    def close(self) -> None:
        """Drop every segment (the link ended; the peer's mappings are its own)."""
        with self._lock:
            self.closed = True
            segs = [s for lst in self._free.values() for s in lst] + list(self._busy.values())
            self._free.clear()
            self._busy.clear()
            self.held_bytes = self.free_bytes = 0
        for seg in segs:
            seg.close()
            self._budget.give(seg.size)

    def __repr__(self) -> str:
        return f"<SegmentPool held={self.held_bytes} free={self.free_bytes} busy={len(self._busy)} closed={self.closed}>"


class SegmentTable:
    """The receiving side of one link: segments the peer announced, mapped once, lent as views.

    Args:
        on_free: called (any thread, possibly inside garbage collection) with a segment id when
            the last view of it is gone; it must only schedule work, never block.
        max_bytes: the most the peer may have mapped here at once; more is a ``ProtocolError``.
    """

    def __init__(self, on_free: Callable[[int], None], max_bytes: int) -> None:
        self.fds: deque[int] = deque()  # received with SCM_RIGHTS, not yet claimed
        self._maps: dict[int, mmap.mmap] = {}
        self._on_free = on_free
        self.max_bytes = max_bytes
        self.mapped_bytes = 0

    def announce(self, seg_id: int, size: int) -> None:
        """Check and map the next received descriptor as segment ``seg_id`` of ``size`` bytes.

        Raises:
            ProtocolError: no descriptor came with the announcement, the id is in use, the
                size is zero or over the cap, or the descriptor is smaller than announced or
                not sealed against shrinking and growing.
        """
        if not self.fds:
            raise ProtocolError("shared-memory segment announced without a file descriptor")
        fd = self.fds.popleft()
        try:
            if seg_id <= 0 or seg_id in self._maps:
                raise ProtocolError(f"shared-memory segment id {seg_id} is invalid or already in use")
            if size <= 0 or self.mapped_bytes + size > self.max_bytes:
                raise ProtocolError(
                    f"shared-memory segment of {size} bytes exceeds the link's limit "
                    f"({self.mapped_bytes} of {self.max_bytes} bytes mapped)"
                )
            try:
                actual = os.fstat(fd).st_size
                seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
            except OSError as exc:
                raise ProtocolError(f"shared-memory segment {seg_id} is not a sealable memfd: {exc}") from None
            if actual < size:
                raise ProtocolError(f"shared-memory segment {seg_id} has {actual} bytes, {size} announced")
            if seals & _SEALS != _SEALS:
                raise ProtocolError(f"shared-memory segment {seg_id} is not sealed against shrinking and growing")
            try:
                self._maps[seg_id] = mmap.mmap(fd, size, flags=mmap.MAP_SHARED | _POPULATE)
            except (OSError, ValueError, OverflowError) as exc:
                raise ProtocolError(f"cannot map shared-memory segment {seg_id}: {exc}") from None
            self.mapped_bytes += size
        finally:
            os.close(fd)

    def retire(self, seg_id: int) -> None:
        """Unmap segment ``seg_id`` (the sender dropped it); unknown ids are ignored."""
        mm = self._maps.pop(seg_id, None)
        if mm is None:
            return
        self.mapped_bytes -= len(mm)
        try:
            mm.close()
        except BufferError:
            pass  # a view still exists (a confused peer): the mapping goes with the last view

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
        self.mapped_bytes = 0

    def __repr__(self) -> str:
        return f"<SegmentTable segments={len(self._maps)} mapped={self.mapped_bytes}>"


def take_fds(ancdata: list[tuple[int, int, bytes]], out: deque[int], limit: int = 64) -> None:
    """Append the descriptors of ``SCM_RIGHTS`` ancillary data to ``out``.

    Descriptors beyond ``limit`` unclaimed ones are closed at once (a peer flooding us with
    descriptors cannot exhaust our table).
    """
    import array
    import socket

    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds = array.array("i")
            fds.frombytes(data[: len(data) - (len(data) % fds.itemsize)])
            for fd in fds:
                if len(out) < limit:
                    out.append(fd)
                else:
                    os.close(fd)
