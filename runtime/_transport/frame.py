"""Frames: one Cap'n Proto ``Envelope`` (standard stream framing) plus out-of-band buffers.

Wire layout of a frame::

    [capnp stream frame of the Envelope][buffer 0][pad to 8][buffer 1][pad to 8]...

The envelope lists the buffers' lengths, so the ``capnp`` tool can decode a captured envelope and
the receiver can ``recv_into`` each buffer straight into its own aligned allocation. Frames are
bounded: an envelope over ``max_envelope_bytes`` or buffers over ``max_frame_bytes`` in total make
the reader raise :class:`~monarch._core.errors.ProtocolError`.
"""

from __future__ import annotations

import mmap
import struct
import threading
from importlib import resources
from typing import Any

import capnp

from .._core.errors import ProtocolError

__all__ = ["FrameDecoder", "alloc_buffer", "encode_frame", "schema"]

_PAD = bytes(8)
_U32 = struct.Struct("<I")
_LARGE_BYTES = 1 << 20


def _load_schema() -> Any:
    path = resources.files("monarch.idl").joinpath("monarch/envelope.capnp")
    with resources.as_file(path) as p:
        return capnp.load(str(p))


schema = _load_schema()
Envelope = schema.Envelope


def encode_frame(env: Any, buffers: list[Any]) -> list[Any]:
    """The iovecs of one frame: the envelope's bytes, then each buffer padded to 8 bytes.

    ``env.buffers`` must already list the byte length of every buffer.
    """
    out: list[Any] = [env.to_bytes()]
    for b in buffers:
        out.append(b)
        n = memoryview(b).nbytes
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
    """Incremental decoder of a byte stream into ``(envelope_reader, buffers)`` frames.

    Feed it with :meth:`feed` (bytes received into its staging buffer) or let the owner
    ``recv_into`` directly into :meth:`want` when it asks for a large buffer.

    Args:
        max_envelope_bytes: largest accepted envelope message.
        max_frame_bytes: largest accepted total of out-of-band buffers in one frame.
    """

    def __init__(self, max_envelope_bytes: int, max_frame_bytes: int) -> None:
        self.max_envelope_bytes = max_envelope_bytes
        self.max_frame_bytes = max_frame_bytes
        self._buf = bytearray()
        # state for the frame in progress
        self._env: Any = None
        self._env_ctx: Any = None
        self._lengths: list[int] = []
        self._buffers: list[memoryview] = []
        self._cur: memoryview | None = None
        self._cur_fill = 0
        self._cur_padded = 0

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
        self._step(out)

    def feed(self, data: bytes | bytearray | memoryview, out: list[tuple[Any, list[memoryview]]]) -> None:
        """Append received bytes and append every completed frame to ``out``.

        Raises:
            ProtocolError: malformed or oversized frame; the connection must be closed.
        """
        self._buf += data
        self._step(out)

    def _step(self, out: list[tuple[Any, list[memoryview]]]) -> None:
        buf = self._buf
        while True:
            if self._env is None:
                if len(buf) < 8:
                    return
                nseg = _U32.unpack_from(buf, 0)[0] + 1
                if nseg > 512:
                    raise ProtocolError(f"envelope claims {nseg} segments")
                table = 4 * (1 + nseg)
                table += table & 4  # pad the segment table to a word
                if len(buf) < table:
                    return
                words = 0
                for i in range(nseg):
                    words += _U32.unpack_from(buf, 4 * (1 + i))[0]
                total = table + 8 * words
                if total > self.max_envelope_bytes:
                    raise ProtocolError(f"envelope of {total} bytes exceeds the limit {self.max_envelope_bytes}")
                if len(buf) < total:
                    return
                raw = bytes(buf[:total])
                del buf[:total]
                try:
                    ctx = Envelope.from_bytes(raw, traversal_limit_in_words=max(words * 4, 64))
                    env = ctx.__enter__()
                    lengths = list(env.buffers)
                except Exception as exc:  # capnp raises KjException with no finer type
                    raise ProtocolError(f"malformed envelope: {exc}") from exc
                if sum(lengths) > self.max_frame_bytes:
                    raise ProtocolError(
                        f"frame of {sum(lengths)} buffer bytes exceeds the limit {self.max_frame_bytes}"
                    )
                self._env, self._env_ctx, self._lengths, self._buffers = env, ctx, lengths, []
                self._cur = None
            # out-of-band buffers
            while len(self._buffers) < len(self._lengths) or self._cur is not None:
                if self._cur is None:
                    n = self._lengths[len(self._buffers)]
                    self._cur = alloc_buffer(n)
                    self._cur_fill = 0
                    self._cur_padded = (n + 7) & ~7
                cur = self._cur
                need = cur.nbytes - self._cur_fill
                if need > 0 and buf:
                    take = min(need, len(buf))
                    cur[self._cur_fill : self._cur_fill + take] = buf[:take]
                    del buf[:take]
                    self._cur_fill += take
                if self._cur_fill < cur.nbytes:
                    return
                pad = self._cur_padded - cur.nbytes
                if pad:
                    if len(buf) < pad:
                        return
                    del buf[:pad]
                self._buffers.append(cur)
                self._cur = None
            out.append((self._env, self._buffers))
            self._env = None
            self._env_ctx = None
            self._lengths = []
            self._buffers = []
