"""Frames: one Cap'n Proto ``Envelope`` (standard stream framing) plus out-of-band buffers.

Wire layout of a frame::

    [capnp stream frame of the Envelope][buffer 0][pad to 8][buffer 1][pad to 8]...

The envelope lists the buffers' lengths, so the ``capnp`` tool can decode a captured envelope and
the receiver can ``recv_into`` each buffer straight into its own aligned allocation. A buffer
whose entry in the envelope's ``shm`` list is non-zero is not in the stream: it lies in a
shared-memory segment of the connection (see ``shm.py``) and arrives as a view of it. Frames are
bounded: an envelope over ``max_envelope_bytes`` or a frame (envelope and buffers) over
``max_frame_bytes`` make the reader raise :class:`~monarch._core.errors.ProtocolError`.
"""

from __future__ import annotations

import mmap
import struct
import threading
from typing import Any

from .._core.errors import ProtocolError
from .envelope import Envelope, EnvelopeTemplate, decode_envelope, load_schema
from .messages import TRANSPORT_KINDS

_TRANSPORT_KIND_NAMES = frozenset(k.value for k in TRANSPORT_KINDS)

__all__ = ["Envelope", "EnvelopeTemplate", "FrameDecoder", "alloc_buffer", "decode_envelope", "encode_frame", "frame_iov", "load_schema"]

_PAD = bytes(8)
_U32 = struct.Struct("<I")
_W2 = struct.Struct("<II")  # the stream header of a one-segment message: (segments - 1, words)
_LARGE_BYTES = 1 << 20


def encode_frame(env: Any, buffers: list[Any]) -> list[Any]:
    """The iovecs of one frame: the envelope's bytes, then each buffer padded to 8 bytes.

    ``env.buffers`` must already list the byte length of every buffer.
    """
    return frame_iov(env.to_bytes(), buffers)


def frame_iov(envelope: Any, buffers: list[Any]) -> list[Any]:
    """The iovecs of one frame whose envelope is already encoded."""
    out: list[Any] = [envelope]
    for b in buffers:
        out.append(b)
        n = b.nbytes if type(b) is memoryview else memoryview(b).nbytes
        if n & 7:
            out.append(_PAD[: 8 - (n & 7)])
    return out


class _BufferPool:
    """Reuses large receive buffers: fresh memory costs a page fault per 4 KiB, which here is
    ten times the cost of the copy itself. A buffer returns to the pool when the last view of
    it (the user's tensor, array or memoryview) is garbage-collected."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.free: dict[int, list[mmap.mmap]] = {}
        self.pooled = 0
        self.lock = threading.Lock()

    def take(self, nbytes: int) -> memoryview:
        import weakref

        import numpy as np

        size = 1 << (nbytes - 1).bit_length()
        with self.lock:
            lst = self.free.get(size)
            mm = lst.pop() if lst else None
            if mm is not None:
                self.pooled -= size
        if mm is None:
            mm = mmap.mmap(-1, size)
        arr = np.frombuffer(mm, dtype=np.uint8, count=nbytes)
        weakref.finalize(arr, self._give_back, mm, size)
        return memoryview(arr)  # type: ignore[arg-type]  # ndarray implements the buffer protocol; numpy stubs lack __buffer__

    def _give_back(self, mm: mmap.mmap, size: int) -> None:
        with self.lock:
            if self.pooled + size <= self.max_bytes:
                self.free.setdefault(size, []).append(mm)
                self.pooled += size
                return
        try:
            mm.close()
        except BufferError:
            pass


_POOL = _BufferPool(max_bytes=1 << 30)


def alloc_buffer(nbytes: int) -> memoryview:
    """A writable buffer for a received out-of-band payload: pooled page-aligned memory when
    large (returned to the pool when every view of it is gone), a ``bytearray`` when small."""
    if nbytes >= _LARGE_BYTES:
        try:
            return _POOL.take(nbytes)
        except ImportError:  # numpy missing: plain anonymous memory
            return memoryview(mmap.mmap(-1, nbytes))
    return memoryview(bytearray(nbytes))


class FrameDecoder:
    """Incremental decoder of a byte stream into ``(envelope, buffers)`` frames.

    Feed it with :meth:`feed` (bytes received into the owner's staging buffer; only an
    incomplete tail is kept) or let the owner ``recv_into`` directly into :meth:`direct_target`
    while a large out-of-band buffer is being received.

    Args:
        max_envelope_bytes: largest accepted envelope message.
        max_frame_bytes: largest accepted frame: the envelope plus its out-of-band buffers.
    """

    def __init__(self, max_envelope_bytes: int, max_frame_bytes: int) -> None:
        self.max_envelope_bytes = max_envelope_bytes
        self.max_frame_bytes = max_frame_bytes
        self._buf = bytearray()  # an incomplete tail carried over to the next feed
        # state for the frame in progress
        self._env: Any = None
        self._lengths: list[int] = []
        self._buffers: list[memoryview] = []
        self._cur: memoryview | None = None
        self._cur_fill = 0
        self._cur_padded = 0
        self._shm: Any = ()  # the frame's shared-memory segment ids, per buffer
        # set by the link: segments the peer lends us (shared memory on Unix sockets), and the
        # handler of transport frames (Kind.SHM_*), which never reach the frame handler
        self.segments: Any = None
        self.on_transport_frame: Any = None

    def direct_target(self) -> memoryview | None:
        """The unfilled part of the out-of-band buffer being received, for ``recv_into``.

        None while the decoder needs staged bytes (headers, envelopes, small buffers).
        """
        if self._cur is not None and not self._buf and self._cur_fill < self._cur.nbytes:
            return self._cur[self._cur_fill :]
        return None

    def advance_direct(self, n: int, out: list[tuple[Any, list[memoryview]]]) -> None:
        """Record ``n`` bytes received straight into :meth:`direct_target`."""
        self._cur_fill += n
        self._step(b"", 0, out)

    def feed(self, data: bytes | bytearray | memoryview, out: list[tuple[Any, list[memoryview]]]) -> None:
        """Take received bytes and append every completed frame to ``out``.

        ``data`` is only read during the call (the caller may reuse its memory afterwards).

        Raises:
            ProtocolError: malformed or oversized frame; the connection must be closed.
        """
        tail = self._buf
        if not tail and self._env is None:
            # the common read: exactly one whole one-segment envelope (a call or a reply
            # without buffers), decoded without the general loop
            end = len(data)
            if end >= 8:
                nseg, words = _W2.unpack_from(data, 0)
                if nseg == 0 and 8 + 8 * words == end and end <= self.max_envelope_bytes:
                    env = decode_envelope(bytes(data))
                    if env.buffers or env.kind in _TRANSPORT_KIND_NAMES:
                        if self._take(env, end, out):
                            self._step(data, end, out)  # buffers in shared memory complete it now
                    else:
                        out.append((env, []))
                    return
        if tail:
            tail += data
            pos = self._step(tail, 0, out)
            if pos == len(tail):
                self._buf = bytearray()  # release the carried tail's memory: idle links hold none
            else:
                del tail[:pos]
        else:
            pos = self._step(data, 0, out)
            if pos < len(data):
                tail += data[pos:]

    def _step(self, src: Any, pos: int, out: list[tuple[Any, list[memoryview]]]) -> int:
        """Decode from ``src[pos:]``; returns the position up to which bytes were consumed."""
        end = len(src)
        while True:
            if self._env is None:
                if end - pos < 8:
                    return pos
                nseg = _U32.unpack_from(src, pos)[0] + 1
                if nseg > 512:
                    raise ProtocolError(f"envelope claims {nseg} segments")
                table = 4 * (1 + nseg)
                table += table & 4  # pad the segment table to a word
                if end - pos < table:
                    return pos
                if nseg == 1:
                    words = _U32.unpack_from(src, pos + 4)[0]
                else:
                    words = sum(struct.unpack_from(f"<{nseg}I", src, pos + 4))
                total = table + 8 * words
                if total > self.max_envelope_bytes:
                    raise ProtocolError(f"envelope of {total} bytes exceeds the limit {self.max_envelope_bytes}")
                if end - pos < total:
                    return pos
                env = decode_envelope(bytes(src[pos : pos + total]))
                pos += total
                if not self._take(env, total, out):
                    continue
            # out-of-band buffers
            while len(self._buffers) < len(self._lengths) or self._cur is not None:
                if self._cur is None:
                    k = len(self._buffers)
                    n = self._lengths[k]
                    if self._shm and self._shm[k]:
                        self._buffers.append(self.segments.view(self._shm[k], n))
                        continue
                    self._cur = alloc_buffer(n)
                    self._cur_fill = 0
                    self._cur_padded = (n + 7) & ~7
                cur = self._cur
                need = cur.nbytes - self._cur_fill
                if need > 0 and pos < end:
                    take = min(need, end - pos)
                    cur[self._cur_fill : self._cur_fill + take] = src[pos : pos + take]
                    pos += take
                    self._cur_fill += take
                if self._cur_fill < cur.nbytes:
                    return pos
                pad = self._cur_padded - cur.nbytes
                if pad:
                    if end - pos < pad:
                        return pos
                    pos += pad
                self._buffers.append(cur)
                self._cur = None
            out.append((self._env, self._buffers))
            self._env = None
            self._lengths = []
            self._buffers = []
            self._shm = ()

    def _take(self, env: Any, total: int, out: list[tuple[Any, list[memoryview]]]) -> bool:
        """A decoded envelope of ``total`` bytes: a transport frame goes to its handler, a frame
        without buffers to ``out``; True when its out-of-band buffers are to be read next.

        Raises:
            ProtocolError: a transport frame with buffers (or no handler), an oversized frame,
                or shared-memory segments this connection does not have.
        """
        lengths = env.buffers
        if env.kind in _TRANSPORT_KIND_NAMES:
            if lengths or self.on_transport_frame is None:
                raise ProtocolError(f"unexpected transport frame {env.kind!r}")
            self.on_transport_frame(env)
            return False
        if not lengths:
            out.append((env, []))
            return False
        if total + sum(lengths) > self.max_frame_bytes:
            raise ProtocolError(
                f"frame of {total + sum(lengths)} bytes exceeds the limit {self.max_frame_bytes}"
            )
        shm = env.shm
        if shm and (len(shm) != len(lengths) or self.segments is None):
            raise ProtocolError("frame names shared-memory segments this connection does not have")
        self._env, self._lengths, self._buffers, self._shm = env, lengths, [], shm
        self._cur = None
        return True
