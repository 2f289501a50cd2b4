"""The envelope reader: bounds-checked decoding of one-segment Cap'n Proto envelopes.

Every pointer is checked against the segment, every traversal charged against a budget (so
shared or cyclic pointers cannot make a small message expensive), every text checked for its
NUL and UTF-8. Positions come from ``wire.py`` (derived from ``envelope.capnp``). Valid messages
outside the fast path (several segments, far pointers, other list encodings), which only other
producers write, raise :class:`Unsupported` for ``capnp_fallback.py``.

Cap'n Proto encoding reference: https://capnproto.org/encoding.html
"""

from __future__ import annotations

import struct
import sys
from typing import Any

from .._core.errors import ProtocolError, SchemaError
from .encoder import W, shape_blob
from .model import NO_SHAPE, Envelope, FrozenShape, Hop, Part, Segment, Shape
from .wire import (
    ENV_DATA_FORMAT,
    ENVELOPE,
    ENVELOPE_POINTERS,
    HOP_ADDR,
    HOP_FORWARD,
    HOP_RANKS,
    HOP_SEQ_FORMAT,
    KINDS,
    PART_ERROR_BIT,
    PART_FORMAT,
    PART_LAST_BIT,
    PART_SIZE,
    SEGMENT_FORMAT,
    SEGMENT_SIZE,
    SHAPE_LABELS,
    SHAPE_OFFSET_FORMAT,
    SHAPE_SIZE,
    SHAPE_SIZES,
    SHAPE_STRIDES,
    TEXT_POINTERS,
)

__all__ = ["Reader", "Unsupported", "decode_full", "read_parts"]

_W = W
_ENV_DATA = struct.Struct(ENV_DATA_FORMAT)
_HOP_DATA = struct.Struct(HOP_SEQ_FORMAT)
_PART = struct.Struct(PART_FORMAT)
_SHAPE_OFFSET = struct.Struct(SHAPE_OFFSET_FORMAT)
_SEGMENT = struct.Struct(SEGMENT_FORMAT)
_ERR = PART_ERROR_BIT
_LAST = PART_LAST_BIT
_LE = sys.byteorder == "little"
_NKINDS = len(KINDS)


class Unsupported(Exception):
    """Valid Cap'n Proto outside the fast path (several segments, far pointers)."""


class Reader:
    """Bounds-checked pointer reading over one segment, with a traversal budget (words) so that
    shared or cyclic pointers cannot make a small message expensive to read."""

    __slots__ = ("budget", "end", "raw")

    def __init__(self, raw: bytes, end: int, budget: int) -> None:
        self.raw = raw
        self.end = end
        self.budget = budget

    def charge(self, words: int) -> None:
        self.budget -= words
        if self.budget < 0:
            raise ProtocolError("envelope exceeds its traversal limit")

    def target(self, pos: int, lo: int, nbytes: int) -> int:
        off = lo >> 2
        if off >= 1 << 29:
            off -= 1 << 30
        t = pos + 8 + 8 * off
        if t < 8 or t + nbytes > self.end:
            raise ProtocolError("envelope pointer out of bounds")
        return t

    def list_at(self, pos: int, esize: int) -> tuple[int, int]:
        """(target, count) of the list pointer at ``pos``; count 0 for a null pointer."""
        lo, hi = _W.unpack_from(self.raw, pos)
        if lo == 0 and hi == 0:
            return 0, 0
        kind = lo & 3
        if kind != 1:
            if kind == 2:
                raise Unsupported
            raise ProtocolError("envelope: expected a list pointer")
        es = hi & 7
        count = hi >> 3
        if es != esize:
            raise Unsupported  # e.g. an upgraded list encoding; let pycapnp judge it
        nbytes = (count * (0, 0, 1, 2, 4, 8, 8, 8)[es] + 7) & ~7
        self.charge(max(nbytes >> 3, 1))
        return self.target(pos, lo, nbytes), count

    def text(self, pos: int) -> str:
        t, n = self.list_at(pos, 2)
        if not n:
            return ""
        raw = self.raw
        if raw[t + n - 1] != 0:
            raise ProtocolError("envelope: text is not NUL-terminated")
        try:
            return raw[t : t + n - 1].decode()
        except UnicodeDecodeError as exc:
            raise ProtocolError(f"envelope: bad text: {exc}") from None

    def data(self, pos: int) -> bytes:
        t, n = self.list_at(pos, 2)
        return self.raw[t : t + n] if n else b""

    def u32s(self, pos: int) -> list[int]:
        t, n = self.list_at(pos, 4)
        if not n:
            return []
        if _LE:
            return memoryview(self.raw)[t : t + 4 * n].cast("I").tolist()
        return list(struct.unpack_from(f"<{n}I", self.raw, t))

    def u64s(self, pos: int) -> list[int]:
        t, n = self.list_at(pos, 5)
        if not n:
            return []
        if _LE:
            return memoryview(self.raw)[t : t + 8 * n].cast("Q").tolist()
        return list(struct.unpack_from(f"<{n}Q", self.raw, t))

    def structs(self, pos: int) -> tuple[int, int, int, int]:
        """(first element, count, data words, pointer count) of a composite list."""
        lo, hi = _W.unpack_from(self.raw, pos)
        if lo == 0 and hi == 0:
            return 0, 0, 0, 0
        kind = lo & 3
        if kind != 1:
            if kind == 2:
                raise Unsupported
            raise ProtocolError("envelope: expected a list pointer")
        if hi & 7 != 7:
            raise Unsupported
        words = hi >> 3
        t = self.target(pos, lo, 8 + 8 * words)
        tlo, thi = _W.unpack_from(self.raw, t)
        if tlo & 3 != 0:
            raise ProtocolError("envelope: bad composite list tag")
        count = tlo >> 2
        dw = thi & 0xFFFF
        pc = thi >> 16
        if count * (dw + pc) > words:
            raise ProtocolError("envelope: composite list overruns its words")
        self.charge(max(words, count) + 1)
        return t + 8, count, dw, pc

    def struct_at(self, pos: int) -> tuple[int, int, int]:
        """(start, data words, pointer count) of the struct pointer at ``pos``; start 0 if null."""
        lo, hi = _W.unpack_from(self.raw, pos)
        if lo == 0 and hi == 0:
            return 0, 0, 0
        kind = lo & 3
        if kind != 0:
            if kind == 2:
                raise Unsupported
            raise ProtocolError("envelope: expected a struct pointer")
        dw = hi & 0xFFFF
        pc = hi >> 16
        self.charge(dw + pc + 1)
        return self.target(pos, lo, 8 * (dw + pc)), dw, pc


def _read_data_words(r: Reader, start: int, dw: int, need: int) -> bytes:
    """The first ``need`` data words of a struct, zero-filled when the struct is smaller."""
    if dw >= need:
        return r.raw[start : start + 8 * need]
    return r.raw[start : start + 8 * dw] + bytes(8 * (need - dw))


def _read_hops(r: Reader, pos: int, depth: int) -> list[Hop]:
    if depth > 64:
        raise ProtocolError("envelope: cast tree nested too deeply")
    e, count, dw, pc = r.structs(pos)
    out = []
    size = 8 * (dw + pc)
    for _ in range(count):
        h = Hop()
        if dw:
            h.seq = _HOP_DATA.unpack_from(r.raw, e)[0]
        p = e + 8 * dw
        if pc > HOP_ADDR:
            h.addr = r.text(p + 8 * HOP_ADDR)
        if pc > HOP_RANKS:
            h.ranks = r.u32s(p + 8 * HOP_RANKS)
        if pc > HOP_FORWARD:
            h.forward = _read_hops(r, p + 8 * HOP_FORWARD, depth + 1)
        out.append(h)
        e += size
    return out


def read_parts(r: Reader, pos: int) -> list[Part]:
    e, count, dw, pc = r.structs(pos)
    out = []
    size = 8 * (dw + pc)
    need = PART_SIZE[0]
    full = dw >= need
    for _ in range(count):
        p = Part()
        rank, bits, length, nbuf = _PART.unpack_from(r.raw, e) if full else _PART.unpack(_read_data_words(r, e, dw, need))
        d = p.__dict__
        d["rank"], d["error"], d["length"], d["buffers"], d["last"] = rank, bool(bits & _ERR), length, nbuf, bool(bits & _LAST)
        out.append(p)
        e += size
    return out


_SHAPE_CACHE: dict[bytes, tuple[bytes, Shape]] = {}


def _read_shape(r: Reader, pos: int) -> Shape:
    start, dw, pc = r.struct_at(pos)
    if not start and not dw and not pc:
        return NO_SHAPE
    raw = r.raw
    # Most messages carry a shape laid out by our own encoder, byte-identical to an earlier one:
    # reuse that decoding when the struct words and everything after them match.
    head = raw[start : start + 8 * (dw + pc)]
    hit = _SHAPE_CACHE.get(head)
    if hit is not None and raw[start : start + len(hit[0])] == hit[0]:
        return hit[1]
    offset = _SHAPE_OFFSET.unpack_from(raw, start)[0] if dw else 0
    p = start + 8 * dw
    labels: tuple[str, ...] = ()
    sizes: tuple[int, ...] = ()
    strides: tuple[int, ...] = ()
    if pc > SHAPE_LABELS:
        t, n = r.list_at(p + 8 * SHAPE_LABELS, 6)
        r.charge(n)
        labels = tuple(r.text(t + 8 * i) for i in range(n))
    if pc > SHAPE_SIZES:
        sizes = tuple(r.u32s(p + 8 * SHAPE_SIZES))
    if pc > SHAPE_STRIDES:
        strides = tuple(r.u32s(p + 8 * SHAPE_STRIDES))
    shape = FrozenShape(labels, offset, sizes, strides)
    if dw == SHAPE_SIZE[0] and pc == SHAPE_SIZE[1]:
        blob = shape_blob(shape)
        if raw[start : start + len(blob)] == blob:
            if len(_SHAPE_CACHE) > 1024:
                _SHAPE_CACHE.clear()
            _SHAPE_CACHE[head] = (blob, shape)
    return shape


def _read_segment(r: Reader, pos: int) -> Segment:
    start, dw, _pc = r.struct_at(pos)
    seg = Segment()
    if start and dw:
        seg.id, seg.size = _SEGMENT.unpack(_read_data_words(r, start, dw, SEGMENT_SIZE[0]))
    return seg


_READ_FN: dict[str, Any] = {
    "origin": Reader.text,
    "actor": Reader.text,
    "ranks": Reader.u32s,
    "endpoint": Reader.text,
    "replyAddr": Reader.text,
    "payload": Reader.data,
    "buffers": Reader.u64s,
    "forward": lambda r, p: _read_hops(r, p, 0),
    "shape": _read_shape,
    "parts": read_parts,
    "sender": Reader.text,
    "shm": Reader.u64s,
    "segment": _read_segment,
}
if set(_READ_FN) != set(ENVELOPE_POINTERS):
    raise SchemaError("envelope.capnp", 1, 1, f"the reader reads {sorted(_READ_FN)}, the schema has {ENVELOPE_POINTERS}")
_READERS: tuple[Any, ...] = tuple(_READ_FN[n] for n in ENVELOPE_POINTERS)  # by pointer index
_NAMES = ENVELOPE_POINTERS
_NPTR = len(ENVELOPE_POINTERS)
_ENV_PTRS = struct.Struct(f"<{_NPTR}Q")
_DW = ENVELOPE.data_words


_TEXT_FIELDS = frozenset(i for i, n in enumerate(ENVELOPE_POINTERS) if n in TEXT_POINTERS)


def decode_full(raw: bytes) -> Envelope:
    """Decode a one-segment message field by field (no prefix cache).

    Raises:
        Unsupported: valid Cap'n Proto outside the fast path (several segments, far pointers).
        ProtocolError: not a valid envelope.
    """
    if len(raw) < 16:
        raise ProtocolError("envelope shorter than its header")
    nseg, words = _W.unpack_from(raw, 0)
    if nseg != 0:
        raise Unsupported
    end = 8 + 8 * words
    if end > len(raw):
        raise ProtocolError("envelope shorter than its segment")
    r = Reader(raw, end, 8 * words + 64)
    env = Envelope()
    start, dw, pc = r.struct_at(8)
    if not start:
        return env
    d = env.__dict__
    if dw >= _DW:
        kind, enc, flags, seq, port, rport = _ENV_DATA.unpack_from(raw, start)
    else:
        kind, enc, flags, seq, port, rport = _ENV_DATA.unpack(_read_data_words(r, start, dw, _DW))
    d["kind"] = KINDS[kind] if kind < _NKINDS else kind  # plain str: cheaper to hash than Kind
    if enc:
        d["encoding"] = enc
    if flags:
        d["flags"] = flags
    if seq:
        d["seq"] = seq
    if port:
        d["port"] = port
    if rport:
        d["replyPort"] = rport
    p = start + 8 * dw
    if pc >= _NPTR:
        words_ = _ENV_PTRS.unpack_from(raw, p)
    else:
        words_ = struct.unpack_from(f"<{pc}Q", raw, p)
    texts = _TEXT_FIELDS
    for i, w in enumerate(words_):
        if not w:
            continue
        if (w & 3) == 1 and ((w >> 32) & 7) == 2 and i in texts:
            # Text, the common case, inlined
            off = (w & 0xFFFFFFFF) >> 2
            if off >= 1 << 29:
                off -= 1 << 30
            t = p + 8 * (i + 1 + off)
            n = w >> 35
            if t < 8 or t + n > end:
                raise ProtocolError("envelope pointer out of bounds")
            if n:
                if raw[t + n - 1] != 0:
                    raise ProtocolError("envelope: text is not NUL-terminated")
                try:
                    d[_NAMES[i]] = raw[t : t + n - 1].decode()
                except UnicodeDecodeError as exc:
                    raise ProtocolError(f"envelope: bad text: {exc}") from None
        else:
            d[_NAMES[i]] = _READERS[i](r, p + 8 * i)
    return env
