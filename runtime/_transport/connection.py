"""The socket link: one stream socket carrying frames both ways (write queue + read path).

A :class:`SocketLink` may be written from any thread: a sender holding no queued data writes
straight to the socket (no event-loop hop); what does not fit is queued and flushed by the event
loop when the socket becomes writable, so no thread ever blocks on a full peer. A link made by
``connect()`` exists before its socket does: frames sent meanwhile are queued (bounded) and go
out once the socket is attached. Reading happens on the event loop only: small frames through
one staging buffer shared by every link of the thread (an idle link holds no receive memory),
large out-of-band buffers ``recv_into`` their own allocation. On Unix links large buffers travel
in shared memory (``shm.py``); its transport frames are handled here and never reach the frame
handler.
"""

from __future__ import annotations

import array
import asyncio
import errno
import itertools
import logging
import socket
import threading
from collections import deque
from collections.abc import Callable
from time import monotonic as _monotonic
from typing import Any

from .._core.errors import ProtocolError
from . import shm
from .base import TransportSettings
from .frame import FrameDecoder
from .messages import Kind
from .shm import SegmentPool, SegmentTable, ShmBudget, segment_frame, take_fds

__all__ = ["SocketLink"]

log = logging.getLogger("monarch.transport")

_IOV_MAX = 512
_BURST_S = 50e-6  # a write this soon after the previous one is coalesced with what follows
_COALESCE_MAX = 64 * 1024  # smaller iovecs are copied into the queue; larger ones queued as views
_FLUSH_BYTES = 1 << 20  # queued bytes that make the sending thread write without waiting
_RECV_CHUNK = 256 * 1024
_ANC_BYTES = socket.CMSG_SPACE(64 * 4)  # room for 64 descriptors per read
_MSG_CTRUNC = socket.MSG_CTRUNC

_SHM_SEGMENT = Kind.SHM_SEGMENT.value
_SHM_FREE = Kind.SHM_FREE.value
_SHM_RETIRE = Kind.SHM_RETIRE.value


class _Stage(threading.local):
    """One staging buffer per thread: reads happen on the loop thread only and the decoder keeps
    just an incomplete tail, so every link of a loop can share it."""

    def __init__(self) -> None:
        self.buf: memoryview | None = None

    def get(self) -> memoryview:
        buf = self.buf
        if buf is None:
            buf = self.buf = memoryview(bytearray(_RECV_CHUNK))
        return buf


_STAGE = _Stage()


class SocketLink:
    """One stream socket carrying frames in both directions (implements ``base.Link``).

    Args:
        loop: the event loop that reads the socket and flushes queued writes.
        on_frame: ``(link, envelope, buffers)`` per received frame, on the loop thread.
        on_close: ``(link, exc)`` once when the link ends, on the loop thread (``exc`` None on EOF).
        settings: frame bounds, shared-memory caps, the connect queue bound.
        sock: the connected socket (made non-blocking here), or None for a link still being
            dialed: it queues what is sent until :meth:`attach`.
        peer: a readable name of the peer, for logs and errors.
        outgoing: whether this process made the link (dial or adopt).
        shm_budget: the transport-wide shared-memory budget; None disables shared memory.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        on_frame: Callable[[Any, Any, list[memoryview]], None],
        on_close: Callable[[Any, BaseException | None], None],
        settings: TransportSettings,
        *,
        sock: socket.socket | None,
        peer: str = "",
        outgoing: bool = False,
        shm_budget: ShmBudget | None = None,
    ) -> None:
        self.loop = loop
        self.peer = peer
        self.outgoing = outgoing
        self.closed = False
        self.state: dict[str, Any] = {}
        self.sock: socket.socket | None = None
        self.fd = -1
        self._settings = settings
        self._on_frame = on_frame
        self._on_close = on_close
        self._close_reported = False
        self._lock = threading.Lock()
        self._pending: deque[Any] = deque()  # memoryviews and (the last one) a bytearray
        self._tail: bytearray | None = None  # the bytearray at the end of _pending, to append to
        self._connecting = sock is None
        self._connect_queued = 0
        self._writer_armed = False
        self._flush_scheduled = False
        self._reading = False
        self._last_write = 0.0
        self._decoder = FrameDecoder(settings.max_envelope_bytes, settings.max_frame_bytes)
        self._decoder.on_transport_frame = self._on_transport_frame
        self._shm_budget = shm_budget
        self._shm_tx: SegmentPool | None = None
        if sock is not None:
            self._set_socket(sock)

    def _set_socket(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.fd = sock.fileno()
        st = self._settings
        if sock.family == socket.AF_UNIX and self._shm_budget is not None and st.shm_enabled and shm.available():
            self._shm_tx = SegmentPool(
                self._shm_budget,
                link_max_bytes=st.shm_link_max_bytes,
                keep_max_bytes=st.shm_keep_max_bytes,
                pool_keep_bytes=st.shm_pool_keep_bytes,
                min_bytes=st.shm_min_bytes,
                on_retire=self._send_retire,
            )
            self._decoder.segments = SegmentTable(self._segment_freed, st.shm_link_max_bytes)

    def attach(self, sock: socket.socket) -> None:
        """Give a dialed link its connected socket, flush what was queued, start reading
        (loop thread)."""
        if self.closed:
            sock.close()
            return
        self._set_socket(sock)
        with self._lock:
            self._connecting = False
            self._connect_queued = 0
            if self._pending:
                self._write_locked()
        self.start_reading()

    def start_reading(self) -> None:
        """Register the reader (loop thread)."""
        if not self.closed and not self._reading and self.sock is not None:
            self._reading = True
            self.loop.add_reader(self.fd, self._on_readable)

    # -- writing ----------------------------------------------------------------------------
    # A frame sent while the link is quiet goes out at once (one sendmsg, no thread hop:
    # latency). A frame sent within _BURST_S of the previous write is queued instead and the
    # event loop flushes everything queued in one sendmsg (throughput: a burst of 10,000
    # messages costs tens of system calls and peer wake-ups, not 10,000). Small iovecs are
    # copied into one bytearray; large buffers are queued as views (zero copy).
    def send(self, iov: list[Any]) -> None:
        """Write one frame's iovecs, from any thread, without blocking.

        Raises:
            ConnectionError: the link is closed, or (while it is still being dialed) its
                queue already holds ``max_connect_queue_bytes``.
        """
        with self._lock:
            if self.closed:
                raise ConnectionResetError(f"connection to {self.peer} is closed")
            if self._connecting:
                n = sum(b.nbytes if type(b) is memoryview else memoryview(b).nbytes for b in iov)
                if self._connect_queued + n > self._settings.max_connect_queue_bytes:
                    raise ConnectionRefusedError(f"connection to {self.peer} is not up yet and its queue is full")
                self._connect_queued += n
                self._append(iov, 0)
                return
            if self._pending:
                self._append(iov, 0)
                if self._tail is not None and len(self._tail) >= _FLUSH_BYTES and not self._writer_armed:
                    self._write_locked()
                return
            now = _monotonic()
            if now - self._last_write < _BURST_S:
                self._last_write = now
                self._append(iov, 0)
                self._schedule_flush()
                return
            self._last_write = now
            try:
                sent = self.sock.sendmsg(iov) if len(iov) <= _IOV_MAX else 0  # type: ignore[union-attr]  # set unless connecting
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as exc:
                self._schedule_close(exc)
                return
            self._append(iov, sent)
            if self._pending:
                self._arm_writer()

    @property
    def flushed(self) -> bool:
        """Nothing sent on this link is still queued here, and it is not still being dialed
        (true once closed: what was queued is gone)."""
        return self.closed or (not self._connecting and not self._pending)

    def share(self, bufs: list[Any]) -> list[int] | None:
        """Move the large buffers of a frame about to be sent into shared memory (Unix links).

        Returns the envelope's ``shm`` list (segment id per buffer, 0 = inline), or None when
        every buffer goes inline. Each shared buffer is copied once here; the caller must then
        send the frame (without those buffers' bytes) on this link.
        """
        pool = self._shm_tx
        if pool is None:
            return None
        ids: list[int] | None = None
        min_bytes = self._settings.shm_min_bytes
        for i, b in enumerate(bufs):
            mv = b if type(b) is memoryview else memoryview(b)
            n = mv.nbytes
            if n < min_bytes:
                continue
            got = pool.acquire(n)
            if got is None:
                continue
            seg, new = got
            if new and not self._announce(seg):
                pool.forget(seg.id)
                continue
            seg.mm[:n] = mv.cast("B") if mv.format != "B" or mv.ndim != 1 else mv
            if ids is None:
                ids = [0] * len(bufs)
            ids[i] = seg.id
        return ids

    def _announce(self, seg: Any) -> bool:
        """Send segment ``seg``'s descriptor ahead of any frame that uses it (only while
        nothing is queued, so the descriptor travels in stream order)."""
        data = segment_frame(Kind.SHM_SEGMENT, seg.id, seg.size)
        with self._lock:
            if self.closed or self._pending or self.sock is None:
                return False
            try:
                sent = self.sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [seg.fd]))])
            except OSError:
                return False
            if sent < len(data):
                self._append([data], sent)
                self._arm_writer()
            return True

    def _send_retire(self, seg_id: int) -> None:
        try:
            self.send([segment_frame(Kind.SHM_RETIRE, seg_id)])
        except ConnectionError:
            pass

    def _segment_freed(self, seg_id: int) -> None:
        # any thread, possibly inside garbage collection: schedule only
        try:
            self.loop.call_soon_threadsafe(self._send_segment_free, seg_id)
        except RuntimeError:  # loop closed
            pass

    def _send_segment_free(self, seg_id: int) -> None:
        if self.closed:
            return
        try:
            self.send([segment_frame(Kind.SHM_FREE, seg_id)])
        except ConnectionError:
            pass

    def _on_transport_frame(self, env: Any) -> None:
        """A ``Kind.SHM_*`` frame from the peer (loop thread, inside the decoder).

        Raises:
            ProtocolError: it names no segment, or shared memory is off on this link.
        """
        seg = env.segment
        if seg is None:
            raise ProtocolError(f"transport frame {env.kind!r} names no segment")
        table = self._decoder.segments
        kind = env.kind
        if kind == _SHM_FREE:
            if self._shm_tx is not None:
                self._shm_tx.release(seg.id)
            return
        if table is None:
            raise ProtocolError("shared-memory frame on a link without shared memory")
        if kind == _SHM_SEGMENT:
            table.announce(seg.id, seg.size)
        else:
            table.retire(seg.id)

    def _append(self, iov: list[Any], skip: int) -> None:
        """Queue ``iov`` minus its first ``skip`` bytes (lock held)."""
        pending = self._pending
        tail = self._tail
        for b in iov:
            mv = b if type(b) is memoryview else memoryview(b)
            n = mv.nbytes
            if not n:
                continue  # an empty buffer (an empty tensor's): queued, it would stall the writer
            if skip:
                if skip >= n:
                    skip -= n
                    continue
                mv = mv.cast("B")[skip:]
                n -= skip
                skip = 0
            if n < _COALESCE_MAX:
                if tail is None:
                    tail = bytearray(mv)
                    pending.append(tail)
                else:
                    tail += mv
            else:
                pending.append(mv.cast("B") if mv.format != "B" or mv.ndim != 1 else mv)
                tail = None
        self._tail = tail

    def _schedule_flush(self) -> None:
        if self._flush_scheduled or self._writer_armed:
            return
        self._flush_scheduled = True
        try:
            if _on_loop_thread(self.loop):
                self.loop.call_soon(self._flush)
            else:
                self.loop.call_soon_threadsafe(self._flush)
        except RuntimeError:  # loop closed at interpreter exit
            self._flush_scheduled = False

    def _flush(self) -> None:
        with self._lock:
            self._flush_scheduled = False
            if self._pending and not self._writer_armed and not self.closed and not self._connecting:
                self._write_locked()

    def _write_locked(self) -> None:
        """Write what is queued until done or the socket is full (then the loop takes over)."""
        pending = self._pending
        sock = self.sock
        assert sock is not None
        while pending:
            if len(pending) == 1:
                batch: list[Any] = [pending[0]]
            else:
                batch = list(itertools.islice(pending, _IOV_MAX))
            try:
                sent = sock.sendmsg(batch)
            except (BlockingIOError, InterruptedError):
                self._arm_writer()
                return
            except OSError as exc:
                pending.clear()
                self._tail = None
                self._schedule_close(exc)
                return
            self._last_write = _monotonic()
            while sent and pending:
                head = pending[0]
                n = len(head) if type(head) is bytearray else head.nbytes
                if n <= sent:
                    sent -= n
                    pending.popleft()
                    if head is self._tail:
                        self._tail = None
                else:
                    if head is self._tail:
                        self._tail = None  # a view now pins it: no more appends
                    pending[0] = memoryview(head)[sent:]
                    sent = 0
                    self._arm_writer()
                    return

    def _arm_writer(self) -> None:
        if self._writer_armed:
            return
        self._writer_armed = True
        if _on_loop_thread(self.loop):
            self.loop.add_writer(self.fd, self._on_writable)
        else:
            self.loop.call_soon_threadsafe(self._add_writer)

    def _add_writer(self) -> None:
        if not self.closed:
            self.loop.add_writer(self.fd, self._on_writable)

    def _on_writable(self) -> None:
        with self._lock:
            self._writer_armed = False
            self._write_locked()
            if self._writer_armed:
                return  # still full: stay registered
            try:
                self.loop.remove_writer(self.fd)
            except (OSError, ValueError):
                pass

    # -- reading ------------------------------------------------------------------------------
    def _recv_with_fds(self, target: memoryview) -> int:
        n, anc, flags, _addr = self.sock.recvmsg_into([target], _ANC_BYTES)  # type: ignore[union-attr]  # reading implies a socket
        if anc:
            take_fds(anc, self._decoder.segments.fds)
        if flags & _MSG_CTRUNC:
            raise ProtocolError("file descriptors lost (control data truncated)")
        return n

    def _on_readable(self) -> None:
        frames, ended, exc = self.read_frames()
        self._deliver(frames)
        if ended:
            self.close(exc)

    def read_frames(self) -> tuple[list[tuple[Any, list[memoryview]]], bool, BaseException | None]:
        """Read what the socket holds without blocking and decode it.

        Returns:
            ``(frames, ended, exc)``: the frames completed; whether the link has ended (EOF,
            a socket error, a malformed frame), then to be closed with ``exc`` (None for EOF).

        The loop thread calls it when the socket is readable; a thread that owns a link the
        loop does not read (a caller's direct link, see ``Router``) may call it instead, one
        reader at a time.
        """
        frames: list[tuple[Any, list[memoryview]]] = []
        dec = self._decoder
        sock = self.sock
        assert sock is not None
        recv = self._recv_with_fds if self._shm_tx is not None else sock.recv_into
        stage = _STAGE.buf or _STAGE.get()
        try:
            for _ in range(64):
                target = dec.direct_target()
                if target is not None:
                    n = recv(target)
                    if n == 0:
                        return frames, True, None
                    dec.advance_direct(n, frames)
                else:
                    n = recv(stage)
                    if n == 0:
                        return frames, True, None
                    dec.feed(stage[:n], frames)
                    if n < _RECV_CHUNK and dec.direct_target() is None:
                        break
        except (BlockingIOError, InterruptedError):
            pass
        except ProtocolError as exc:
            log.error("closing connection from %s: %s", self.peer or "peer", exc)
            return frames, True, exc
        except OSError as exc:
            return frames, True, None if exc.errno in (errno.ECONNRESET, errno.EPIPE) else exc
        return frames, False, None

    def _deliver(self, frames: list[tuple[Any, list[memoryview]]]) -> None:
        """Hand ``frames`` (from :meth:`read_frames`) to the frame handler, in order."""
        for env, bufs in frames:
            if self.closed:
                return
            try:
                self._on_frame(self, env, bufs)
            except ProtocolError as exc:
                log.error("closing connection from %s: %s", self.peer or "peer", exc)
                self.close(exc)
                return
            except Exception:
                log.exception("error while handling a frame from %s", self.peer or "peer")

    deliver = _deliver

    # -- closing ------------------------------------------------------------------------------
    def schedule_close(self, exc: BaseException | None) -> None:
        """Close the link on the loop thread (from any thread)."""
        self._schedule_close(exc)

    def _schedule_close(self, exc: BaseException | None) -> None:
        if _on_loop_thread(self.loop):
            self.loop.call_soon(self.close, exc)
        else:
            try:
                self.loop.call_soon_threadsafe(self.close, exc)
            except RuntimeError:  # loop already closed at interpreter exit
                pass

    def close(self, exc: BaseException | None = None) -> None:
        """Close the socket and report it once (loop thread)."""
        with self._lock:
            self.closed = True
            self._pending.clear()
            self._tail = None
            report = not self._close_reported
            self._close_reported = True
        if self._shm_tx is not None:
            self._shm_tx.close()
        if self._decoder.segments is not None:
            self._decoder.segments.close()
        sock = self.sock
        if sock is not None and sock.fileno() >= 0:
            for remove in (self.loop.remove_reader, self.loop.remove_writer):
                try:
                    remove(self.fd)
                except (OSError, ValueError, RuntimeError):
                    pass
            try:
                sock.close()
            except OSError:
                pass
        if report:
            self._on_close(self, exc)

    def __repr__(self) -> str:
        state = "closed" if self.closed else "connecting" if self._connecting else "open"
        return f"<SocketLink peer={self.peer!r} {state} outgoing={self.outgoing} queued={len(self._pending)}>"


def _on_loop_thread(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False
