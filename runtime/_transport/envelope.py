"""The wire envelope (``idl/monarch/envelope.capnp``), encoded and decoded without pycapnp.

Every frame starts with one ``Envelope`` in standard Cap'n Proto stream framing. Building and
reading it through pycapnp costs ~9 us and ~19 us per message here (one Python-to-C++ crossing
per field); this module writes and reads the same bytes with ``struct`` in a few microseconds.
The layout constants below are the schema's (checked against pycapnp in
``tests/runtime/test_envelope.py``), so the ``capnp`` tool and pycapnp decode our frames, and
we decode theirs: single-segment messages take the fast path; multi-segment messages and far
pointers, which only other producers write, go through pycapnp (imported on first need).

:class:`Envelope` serves as builder and reader alike, with the attribute names of the schema
and the subset of pycapnp's builder API the runtime uses (``new_message``, ``init``,
``clear_write_flag``, ``to_bytes``). Unset fields read as the schema defaults. A reader's lists
are Python lists, its ``Data`` is ``bytes``, its enum is the enumerant's name.

Cap'n Proto encoding reference: https://capnproto.org/encoding.html
"""

from __future__ import annotations

import struct
import sys
from typing import Any

from .._core.errors import ProtocolError
from .messages import KIND_BY_CODE, KIND_CODE, TRANSPORT_KINDS

__all__ = ["KINDS", "Envelope", "EnvelopeTemplate", "Hop", "Part", "Segment", "Shape", "decode_envelope"]

KINDS = tuple(k.value for k in KIND_BY_CODE)
_KIND_CODE = KIND_CODE
_NKINDS = len(KIND_BY_CODE)
_TRANSPORT_KIND_CODES = frozenset(KIND_CODE[k] for k in TRANSPORT_KINDS)

# struct sizes (data words, pointer count) and field slots, as in envelope.capnp
ENVELOPE_SIZE = (4, 13)
SEGMENT_SIZE = (2, 0)
HOP_SIZE = (1, 3)
PART_SIZE = (2, 0)
SHAPE_SIZE = (1, 3)
# Envelope pointer slots in order
ENVELOPE_POINTERS = (
    "origin",
    "actor",
    "ranks",
    "endpoint",
    "replyAddr",
    "payload",
    "buffers",
    "forward",
    "shape",
    "parts",
    "sender",
    "shm",
    "segment",
)

_W = struct.Struct("<II")  # one pointer word as (low half, high half); also the stream header
_ENV_DATA = struct.Struct("<HBxIQQQ")  # kind, encoding, flags, seq, port, replyPort
_HOP_DATA = struct.Struct("<Q")  # seq
_PART = struct.Struct("<IB3xII")  # rank, error|last<<1, length, buffers
_U32 = struct.Struct("<I")
_ZEROS = bytes(64)
_LE = sys.byteorder == "little"
_ROOT = _W.pack(0, ENVELOPE_SIZE[0] | (ENVELOPE_SIZE[1] << 16))
_ENV_FIXED = 8 + 8 + 8 * (ENVELOPE_SIZE[0] + ENVELOPE_SIZE[1])  # header + root pointer + struct


class _Unsupported(Exception):
    """Valid Cap'n Proto outside the fast path (several segments, far pointers)."""


# ---------------------------------------------------------------------------------------------
# the objects


class Shape:
    """``Shape`` struct: the sliced mesh a message was sent to."""

    labels: Any = ()
    offset = 0
    sizes: Any = ()
    strides: Any = ()

    def __repr__(self) -> str:
        return f"Shape(labels={list(self.labels)}, offset={self.offset}, sizes={list(self.sizes)}, strides={list(self.strides)})"


class _FrozenShape(Shape):
    """A read-only shape: the value of an unset ``shape`` field, and decoded shapes, which are
    shared between the messages that carry the same bytes."""

    def __init__(self, labels: Any = (), offset: int = 0, sizes: Any = (), strides: Any = ()) -> None:
        d = self.__dict__
        d["labels"], d["offset"], d["sizes"], d["strides"] = labels, offset, sizes, strides

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("a received shape is read-only; init('shape') on a builder instead")


_NO_SHAPE = _FrozenShape()


class Part:
    """``Part`` struct: one result inside a reply."""

    rank = 0
    error = False
    length = 0
    buffers = 0
    last = False

    def __repr__(self) -> str:
        return f"Part(rank={self.rank}, error={self.error}, length={self.length}, buffers={self.buffers}, last={self.last})"


class Segment:
    """``Segment`` struct: a shared-memory segment named by a transport frame."""

    id = 0
    size = 0

    def __repr__(self) -> str:
        return f"Segment(id={self.id}, size={self.size})"


class Hop:
    """``Hop`` struct: one proc of a cast tree, with the procs below it."""

    addr = ""
    seq = 0
    ranks: Any = ()
    forward: Any = ()

    def init(self, name: str, n: int) -> list[Any]:
        if name == "forward":
            lst: list[Any] = [Hop() for _ in range(n)]
        elif name == "ranks":
            lst = [0] * n
        else:
            raise AttributeError(f"Hop has no list field {name!r}")
        setattr(self, name, lst)
        return lst

    def __repr__(self) -> str:
        return f"Hop(addr={self.addr!r}, seq={self.seq}, ranks={list(self.ranks)}, forward={list(self.forward)})"


class Envelope:
    """An ``Envelope`` message: builder (set attributes, ``to_bytes``) and reader alike.

    Attribute names and defaults are the schema's; see ``idl/monarch/envelope.capnp``.
    """

    kind: Any = "call"
    origin = ""
    seq = 0
    actor = ""
    ranks: Any = ()
    endpoint = ""
    port = 0
    replyAddr = ""
    replyPort = 0
    encoding = 0
    payload: Any = b""
    buffers: Any = ()
    forward: Any = ()
    shape: Any = _NO_SHAPE
    parts: Any = ()
    sender = ""
    flags = 0
    shm: Any = ()
    segment: Any = None

    @classmethod
    def new_message(cls) -> Envelope:
        """An empty builder (pycapnp's spelling)."""
        return cls()

    def init(self, name: str, n: int = 0) -> Any:
        """A fresh list of ``n`` elements (or the ``shape`` struct) set as field ``name``."""
        if name == "parts":
            value: Any = [Part() for _ in range(n)]
        elif name == "forward":
            value = [Hop() for _ in range(n)]
        elif name == "buffers" or name == "ranks" or name == "shm":
            value = [0] * n
        elif name == "shape":
            value = Shape()
        elif name == "segment":
            value = Segment()
        else:
            raise AttributeError(f"Envelope has no list or struct field {name!r}")
        self.__dict__[name] = value
        return value

    def clear_write_flag(self) -> None:
        """Nothing to do (pycapnp's builders warn on rewrites; these do not)."""

    def copy(self) -> Envelope:
        """A shallow copy (lists and structs shared)."""
        out = Envelope()
        out.__dict__.update(self.__dict__)
        return out

    def to_bytes(self) -> bytearray:
        """The message in Cap'n Proto stream framing (one segment)."""
        return _encode(self.__dict__)

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self.__dict__.items())
        return f"Envelope({fields})"


# ---------------------------------------------------------------------------------------------
# encoding


def _list_ptr(buf: bytearray, pos: int, esize: int, count: int) -> None:
    _W.pack_into(buf, pos, ((len(buf) - pos - 8) >> 1) | 1, (count << 3) | esize)


_TEXTS: dict[str, tuple[int, bytes]] = {}


def _text_entry(s: str) -> tuple[int, bytes]:
    """(high pointer word, NUL-terminated padded bytes) of a text, cached: names and addresses
    repeat on every message."""
    b = s.encode()
    entry = (((len(b) + 1) << 3) | 2, b + _ZEROS[: 8 - (len(b) & 7)])
    if len(_TEXTS) > 4096:
        _TEXTS.clear()
    _TEXTS[s] = entry
    return entry


def _w_text(buf: bytearray, pos: int, s: str) -> None:
    entry = _TEXTS.get(s) or _text_entry(s)
    _W.pack_into(buf, pos, ((len(buf) - pos - 8) >> 1) | 1, entry[0])
    buf += entry[1]


def _w_data(buf: bytearray, pos: int, data: Any) -> None:
    n = len(data) if type(data) is bytes else memoryview(data).nbytes
    if not n:
        return
    _W.pack_into(buf, pos, ((len(buf) - pos - 8) >> 1) | 1, (n << 3) | 2)
    buf += data
    if n & 7:
        buf += _ZEROS[: 8 - (n & 7)]


_PACKERS: dict[tuple[int, int], struct.Struct] = {}


def _w_ints(buf: bytearray, pos: int, values: Any, width: int) -> None:
    """Append a list of ``width``-byte unsigned ints (4 or 8) and point ``pos`` at it."""
    n = len(values)
    if not n:
        return
    _W.pack_into(buf, pos, ((len(buf) - pos - 8) >> 1) | 1, (n << 3) | (4 if width == 4 else 5))
    st = _PACKERS.get((width, n))
    if st is None:
        pad = "4x" if width == 4 and n & 1 else ""
        st = _PACKERS[(width, n)] = struct.Struct(f"<{n}{'I' if width == 4 else 'Q'}{pad}")
    buf += st.pack(*values)


def _w_u32s(buf: bytearray, pos: int, values: Any) -> None:
    _w_ints(buf, pos, values, 4)


def _w_u64s(buf: bytearray, pos: int, values: Any) -> None:
    _w_ints(buf, pos, values, 8)


def _w_parts(buf: bytearray, pos: int, parts: Any) -> None:
    n = len(parts)
    if not n:
        return
    dw = PART_SIZE[0]
    _W.pack_into(buf, pos, ((len(buf) - pos - 8) >> 1) | 1, ((n * dw) << 3) | 7)
    buf += _W.pack(n << 2, dw)
    pack = _PART.pack
    for p in parts:
        buf += pack(p.rank, (1 if p.error else 0) | (2 if p.last else 0), p.length, p.buffers)


def _w_hops(buf: bytearray, pos: int, hops: Any) -> None:
    n = len(hops)
    if not n:
        return
    dw, pc = HOP_SIZE
    words = dw + pc
    _W.pack_into(buf, pos, ((len(buf) - pos - 8) >> 1) | 1, ((n * words) << 3) | 7)
    buf += _W.pack(n << 2, dw | (pc << 16))
    body = len(buf)
    buf += bytes(8 * words * n)
    for i, h in enumerate(hops):
        e = body + 8 * words * i
        _HOP_DATA.pack_into(buf, e, h.seq)
        p = e + 8 * dw
        if h.addr:
            _w_text(buf, p, h.addr)
        _w_u32s(buf, p + 8, h.ranks)
        _w_hops(buf, p + 16, h.forward)


_SHAPE_PTR_HI = SHAPE_SIZE[0] | (SHAPE_SIZE[1] << 16)
_SHAPES: dict[tuple[Any, ...], bytes] = {}


def _shape_blob(s: Any) -> bytes:
    """The struct and everything it points to, position-independent (pointers inside are
    relative), so one encoding serves every message sent to the same slice."""
    key = (tuple(s.labels), s.offset, tuple(s.sizes), tuple(s.strides))
    blob = _SHAPES.get(key)
    if blob is not None:
        return blob
    dw, pc = SHAPE_SIZE
    buf = bytearray(8 * (dw + pc))
    _U32.pack_into(buf, 0, s.offset)
    p = 8 * dw
    labels = key[0]
    if labels:
        n = len(labels)
        _list_ptr(buf, p, 6, n)
        lp = len(buf)
        buf += bytes(8 * n)
        for i, label in enumerate(labels):
            _w_text(buf, lp + 8 * i, label)
    _w_u32s(buf, p + 8, key[2])
    _w_u32s(buf, p + 16, key[3])
    blob = bytes(buf)
    if len(_SHAPES) > 4096:
        _SHAPES.clear()
    _SHAPES[key] = blob
    return blob


def _w_shape_field(buf: bytearray, pos: int, s: Any) -> None:
    if s is _NO_SHAPE:
        return
    blob = _shape_blob(s)
    _W.pack_into(buf, pos, (len(buf) - pos - 8) >> 1, _SHAPE_PTR_HI)
    buf += blob


def _w_text_field(buf: bytearray, pos: int, s: str) -> None:
    if s:
        entry = _TEXTS.get(s) or _text_entry(s)
        _W.pack_into(buf, pos, ((len(buf) - pos - 8) >> 1) | 1, entry[0])
        buf += entry[1]


_SEGMENT = struct.Struct("<QQ")
_SEGMENT_PTR_HI = SEGMENT_SIZE[0] | (SEGMENT_SIZE[1] << 16)


def _w_segment(buf: bytearray, pos: int, seg: Any) -> None:
    _W.pack_into(buf, pos, (len(buf) - pos - 8) >> 1, _SEGMENT_PTR_HI)
    buf += _SEGMENT.pack(seg.id, seg.size)


_P0 = _ENV_FIXED - 8 * ENVELOPE_SIZE[1]
_WRITERS = {
    "origin": (_P0, _w_text_field),
    "actor": (_P0 + 8, _w_text_field),
    "ranks": (_P0 + 16, _w_u32s),
    "endpoint": (_P0 + 24, _w_text_field),
    "replyAddr": (_P0 + 32, _w_text_field),
    "payload": (_P0 + 40, _w_data),
    "buffers": (_P0 + 48, _w_u64s),
    "forward": (_P0 + 56, _w_hops),
    "shape": (_P0 + 64, _w_shape_field),
    "parts": (_P0 + 72, _w_parts),
    "sender": (_P0 + 80, _w_text_field),
    "shm": (_P0 + 88, _w_u64s),
    "segment": (_P0 + 96, _w_segment),
}


_PAYLOAD_PTR_AT = _WRITERS["payload"][0]
_BUFFERS_PTR_AT = _WRITERS["buffers"][0]
_PARTS_PTR_AT = _WRITERS["parts"][0]
_SHM_PTR_AT = _WRITERS["shm"][0]
_U64 = struct.Struct("<Q")


def _encode(d: dict[str, Any]) -> bytearray:
    buf = bytearray(_ENV_FIXED)
    buf[8:16] = _ROOT
    kind = d.get("kind", "call")
    code = _KIND_CODE.get(kind) if isinstance(kind, str) else None
    _ENV_DATA.pack_into(
        buf,
        16,
        int(kind) if code is None else code,
        d.get("encoding", 0),
        d.get("flags", 0),
        d.get("seq", 0),
        d.get("port", 0),
        d.get("replyPort", 0),
    )
    # fields that repeat from message to message first, those that vary last: the receiver
    # recognises the repeating prefix (see _decode_cached)
    get = d.get
    for name, pos, write in _ORDER:
        value = get(name)
        if value is not None:
            write(buf, pos, value)
    _W.pack_into(buf, 0, 0, (len(buf) - 8) >> 3)
    return buf


_VARIABLE_POINTERS = ("parts", "payload", "buffers", "shm")
_ORDER = tuple(
    (name, _WRITERS[name][0], _WRITERS[name][1])
    for name in ("origin", "actor", "endpoint", "replyAddr", "sender", "ranks", "shape", "forward", *_VARIABLE_POINTERS, "segment")
)


_Q = struct.Struct("<Q")
_SEQ_AT = 16 + 8  # byte offsets in an encoded message (header, root pointer, then data words)
_REPLY_PORT_AT = 16 + 24


class EnvelopeTemplate:
    """An envelope encoded once for many messages that differ only in ``seq``, ``replyPort``,
    ``payload`` and ``buffers`` (the calls of one endpoint to one slice of a mesh).

    ``encode`` copies the prefix and appends the variable parts: ~1 us instead of building and
    encoding the whole envelope on every call.
    """

    __slots__ = ("_prefix",)

    def __init__(self, env: Envelope) -> None:
        d = {k: v for k, v in env.__dict__.items() if k not in ("seq", "replyPort", *_VARIABLE_POINTERS)}
        self._prefix = bytes(_encode(d))

    def encode(
        self, seq: int, reply_port: int, payload: Any, buffer_lengths: list[int], shm: list[int] | None = None
    ) -> bytearray:
        buf = bytearray(self._prefix)
        if seq:
            _Q.pack_into(buf, _SEQ_AT, seq)
        if reply_port:
            _Q.pack_into(buf, _REPLY_PORT_AT, reply_port)
        _w_data(buf, _PAYLOAD_PTR_AT, payload)
        if buffer_lengths:
            _w_u64s(buf, _BUFFERS_PTR_AT, buffer_lengths)
            if shm:
                _w_u64s(buf, _SHM_PTR_AT, shm)
        _W.pack_into(buf, 0, 0, (len(buf) - 8) >> 3)
        return buf


# ---------------------------------------------------------------------------------------------
# decoding


class _Reader:
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
                raise _Unsupported
            raise ProtocolError("envelope: expected a list pointer")
        es = hi & 7
        count = hi >> 3
        if es != esize:
            raise _Unsupported  # e.g. an upgraded list encoding; let pycapnp judge it
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
                raise _Unsupported
            raise ProtocolError("envelope: expected a list pointer")
        if hi & 7 != 7:
            raise _Unsupported
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
                raise _Unsupported
            raise ProtocolError("envelope: expected a struct pointer")
        dw = hi & 0xFFFF
        pc = hi >> 16
        self.charge(dw + pc + 1)
        return self.target(pos, lo, 8 * (dw + pc)), dw, pc


def _read_data_words(r: _Reader, start: int, dw: int, need: int) -> bytes:
    """The first ``need`` data words of a struct, zero-filled when the struct is smaller."""
    if dw >= need:
        return r.raw[start : start + 8 * need]
    return r.raw[start : start + 8 * dw] + bytes(8 * (need - dw))


def _read_hops(r: _Reader, pos: int, depth: int) -> list[Hop]:
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
        if pc > 0:
            h.addr = r.text(p)
        if pc > 1:
            h.ranks = r.u32s(p + 8)
        if pc > 2:
            h.forward = _read_hops(r, p + 16, depth + 1)
        out.append(h)
        e += size
    return out


def _read_parts(r: _Reader, pos: int) -> list[Part]:
    e, count, dw, pc = r.structs(pos)
    out = []
    size = 8 * (dw + pc)
    full = dw >= PART_SIZE[0]
    for _ in range(count):
        p = Part()
        rank, bits, length, nbuf = _PART.unpack_from(r.raw, e) if full else _PART.unpack(_read_data_words(r, e, dw, 2))
        d = p.__dict__
        d["rank"], d["error"], d["length"], d["buffers"], d["last"] = rank, bool(bits & 1), length, nbuf, bool(bits & 2)
        out.append(p)
        e += size
    return out


_SHAPE_CACHE: dict[bytes, tuple[bytes, Shape]] = {}


def _read_shape(r: _Reader, pos: int) -> Shape:
    start, dw, pc = r.struct_at(pos)
    if not start and not dw and not pc:
        return _NO_SHAPE
    raw = r.raw
    # Most messages carry a shape laid out by our own encoder, byte-identical to an earlier one:
    # reuse that decoding when the struct words and everything after them match.
    head = raw[start : start + 8 * (dw + pc)]
    hit = _SHAPE_CACHE.get(head)
    if hit is not None and raw[start : start + len(hit[0])] == hit[0]:
        return hit[1]
    offset = _U32.unpack_from(raw, start)[0] if dw else 0
    p = start + 8 * dw
    labels: tuple[str, ...] = ()
    sizes: tuple[int, ...] = ()
    strides: tuple[int, ...] = ()
    if pc > 0:
        t, n = r.list_at(p, 6)
        r.charge(n)
        labels = tuple(r.text(t + 8 * i) for i in range(n))
    if pc > 1:
        sizes = tuple(r.u32s(p + 8))
    if pc > 2:
        strides = tuple(r.u32s(p + 16))
    shape = _FrozenShape(labels, offset, sizes, strides)
    if dw == SHAPE_SIZE[0] and pc == SHAPE_SIZE[1]:
        blob = _shape_blob(shape)
        if raw[start : start + len(blob)] == blob:
            if len(_SHAPE_CACHE) > 1024:
                _SHAPE_CACHE.clear()
            _SHAPE_CACHE[head] = (blob, shape)
    return shape


def _read_segment(r: _Reader, pos: int) -> Segment:
    start, dw, _pc = r.struct_at(pos)
    seg = Segment()
    if start and dw:
        seg.id, seg.size = _SEGMENT.unpack(_read_data_words(r, start, dw, 2))
    return seg


_READERS: tuple[Any, ...] = (
    _Reader.text,
    _Reader.text,
    _Reader.u32s,
    _Reader.text,
    _Reader.text,
    _Reader.data,
    _Reader.u64s,
    lambda r, p: _read_hops(r, p, 0),
    _read_shape,
    _read_parts,
    _Reader.text,
    _Reader.u64s,
    _read_segment,
)
_NAMES = ENVELOPE_POINTERS
_NPTR = len(ENVELOPE_POINTERS)
_ENV_PTRS = struct.Struct(f"<{_NPTR}Q")


def decode_envelope(raw: bytes) -> Envelope:
    """Read one stream-framed ``Envelope`` (the whole message, header included).

    Raises:
        ProtocolError: the bytes are not a valid envelope.
    """
    try:
        if len(raw) >= _ENV_FIXED and raw[8:16] == _ROOT:
            hit = _PREFIXES.get(_PREFIX_KEY.unpack_from(raw, 0))
            if hit is not None and raw[_ENV_FIXED : hit[0]] == hit[1]:
                return _decode_cached(raw, hit)
            env = _decode(raw)
            _remember_prefix(raw, env)
            return env
        return _decode(raw)
    except _Unsupported:
        return _decode_with_pycapnp(raw)
    except (struct.error, IndexError, ValueError, OverflowError) as exc:
        raise ProtocolError(f"malformed envelope: {exc}") from None


_TEXT_FIELDS = frozenset(i for i, n in enumerate(ENVELOPE_POINTERS) if n in ("origin", "actor", "endpoint", "replyAddr", "sender"))


def _decode(raw: bytes) -> Envelope:
    if len(raw) < 16:
        raise ProtocolError("envelope shorter than its header")
    nseg, words = _W.unpack_from(raw, 0)
    if nseg != 0:
        raise _Unsupported
    end = 8 + 8 * words
    if end > len(raw):
        raise ProtocolError("envelope shorter than its segment")
    r = _Reader(raw, end, 8 * words + 64)
    env = Envelope()
    start, dw, pc = r.struct_at(8)
    if not start:
        return env
    d = env.__dict__
    if dw >= 4:
        kind, enc, flags, seq, port, rport = _ENV_DATA.unpack_from(raw, start)
    else:
        kind, enc, flags, seq, port, rport = _ENV_DATA.unpack(_read_data_words(r, start, dw, 4))
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


# Messages built from one EnvelopeTemplate (or by _encode from the same static fields) share
# their header-less prefix: the data words but seq/port/replyPort, the pointer words but those of
# the variable fields, and the objects those point to, laid out before the variable ones. Such a
# prefix, once decoded, is looked up by its pointer words and compared byte for byte; then only
# the variable fields are read. Everything compared is relative (Cap'n Proto pointers are), so
# equal bytes decode to equal fields.
_PREFIX_KEY = struct.Struct(
    "<8x"  # stream header (lengths vary)
    "8x"  # root pointer (checked equal to _ROOT)
    "Q"  # kind, encoding, flags
    "24x"  # seq, port, replyPort
    "5Q"  # origin, actor, ranks, endpoint, replyAddr
    "16x"  # payload, buffers
    "2Q"  # forward, shape
    "8x"  # parts
    "Q"  # sender
    "8x"  # shm
    "8x"  # segment
)
_VAR_DATA = struct.Struct("<QQQ")  # seq, port, replyPort at byte 24
_PREFIXES: dict[tuple[int, ...], tuple[int, bytes, dict[str, Any]]] = {}
_STATIC_NAMES = tuple(n for n in ENVELOPE_POINTERS if n not in _VARIABLE_POINTERS)


def _remember_prefix(raw: bytes, env: Envelope) -> None:
    d = env.__dict__
    if "segment" in d or raw[16] in _TRANSPORT_KIND_CODES:
        return  # transport frames are rare and carry per-frame structs: always decoded in full
    static = {k: v for k, v in d.items() if k not in ("seq", "port", "replyPort", *_VARIABLE_POINTERS)}
    prefix = _encode(static)
    n = len(prefix)
    if raw[_ENV_FIXED:n] != prefix[_ENV_FIXED:] or raw[16:24] != prefix[16:24]:
        return  # laid out by another encoder: decode such messages in full
    if raw[48:88] != prefix[48:88] or raw[104:120] != prefix[104:120] or raw[128:136] != prefix[128:136]:
        return
    for k in ("ranks",):
        if k in static:
            static[k] = tuple(static[k])
    if len(_PREFIXES) > 1024:
        _PREFIXES.clear()
    _PREFIXES[_PREFIX_KEY.unpack_from(raw, 0)] = (n, bytes(prefix[_ENV_FIXED:]), static)


def _decode_cached(raw: bytes, hit: tuple[int, bytes, dict[str, Any]]) -> Envelope:
    nseg, words = _W.unpack_from(raw, 0)
    end = 8 + 8 * words
    if nseg != 0 or end > len(raw) or end < hit[0]:
        return _decode(raw)
    env = Envelope()
    d = env.__dict__
    d.update(hit[2])
    seq, port, rport = _VAR_DATA.unpack_from(raw, 24)
    if seq:
        d["seq"] = seq
    if port:
        d["port"] = port
    if rport:
        d["replyPort"] = rport
    r = _Reader(raw, end, 8 * words + 64)
    w = _U64.unpack_from(raw, _PARTS_PTR_AT)[0]
    if w:
        if w & 0xFFFFFFFF00000007 == _ONE_PART_PTR_HI:
            # one Part, the common reply: inlined
            t = _PARTS_PTR_AT + 8 + 8 * ((w & 0xFFFFFFFF) >> 2)
            if t + 24 > end or raw[t : t + 8] != _ONE_PART_TAG:
                d["parts"] = _read_parts(r, _PARTS_PTR_AT)
            else:
                rank, bits, length, nbuf = _PART.unpack_from(raw, t + 8)
                part = Part()
                pd = part.__dict__
                pd["rank"], pd["error"], pd["length"], pd["buffers"], pd["last"] = rank, bool(bits & 1), length, nbuf, bool(bits & 2)
                d["parts"] = [part]
        else:
            d["parts"] = _read_parts(r, _PARTS_PTR_AT)
    w = _U64.unpack_from(raw, _PAYLOAD_PTR_AT)[0]
    if w:
        if (w & 3) == 1 and ((w >> 32) & 7) == 2:
            off = (w & 0xFFFFFFFF) >> 2
            if off >= 1 << 29:
                off -= 1 << 30
            t = _PAYLOAD_PTR_AT + 8 + 8 * off
            n = w >> 35
            if t < 8 or t + n > end:
                raise ProtocolError("envelope pointer out of bounds")
            d["payload"] = raw[t : t + n]
        else:
            d["payload"] = r.data(_PAYLOAD_PTR_AT)
    if raw[_BUFFERS_PTR_AT : _SHM_PTR_AT + 8] != _ZEROS[: _SHM_PTR_AT + 8 - _BUFFERS_PTR_AT]:
        if raw[_BUFFERS_PTR_AT : _BUFFERS_PTR_AT + 8] != _ZEROS[:8]:
            d["buffers"] = r.u64s(_BUFFERS_PTR_AT)
        if raw[_SHM_PTR_AT : _SHM_PTR_AT + 8] != _ZEROS[:8]:
            d["shm"] = r.u64s(_SHM_PTR_AT)
    return env


# a list pointer to a composite list of 2 words (one Part), with a non-negative offset < 2**29
_ONE_PART_PTR_HI = ((2 << 3) | 7) << 32 | 1
_ONE_PART_TAG = _W.pack(1 << 2, PART_SIZE[0] | (PART_SIZE[1] << 16))


_SCHEMA: Any = None


def load_schema() -> Any:
    """The pycapnp module of ``envelope.capnp`` (imports pycapnp; for tools and tests)."""
    global _SCHEMA
    if _SCHEMA is None:
        from importlib import resources

        import capnp

        path = resources.files("monarch.idl").joinpath("monarch/envelope.capnp")
        with resources.as_file(path) as p:
            _SCHEMA = capnp.load(str(p))
    return _SCHEMA


def _decode_with_pycapnp(raw: bytes) -> Envelope:
    """Slow path: any valid message pycapnp reads (several segments, far pointers)."""
    schema = load_schema()
    try:
        with schema.Envelope.from_bytes(bytes(raw), traversal_limit_in_words=max(len(raw), 64)) as m:
            return _from_capnp(m)
    except ProtocolError:
        raise
    except Exception as exc:  # capnp raises KjException with no finer type
        raise ProtocolError(f"malformed envelope: {exc}") from None


def _from_capnp(m: Any) -> Envelope:
    env = Envelope()
    kind = str(m.kind)
    env.kind = kind if kind in _KIND_CODE else int(kind) if kind.isdigit() else kind
    for f in ("origin", "actor", "endpoint", "replyAddr", "sender"):
        setattr(env, f, str(getattr(m, f)))
    for f in ("seq", "port", "replyPort", "encoding", "flags"):
        setattr(env, f, int(getattr(m, f)))
    env.ranks = [int(x) for x in m.ranks]
    env.buffers = [int(x) for x in m.buffers]
    env.shm = [int(x) for x in m.shm]
    env.payload = bytes(m.payload)
    if m._has("shape"):
        s = Shape()
        s.labels = [str(x) for x in m.shape.labels]
        s.offset = int(m.shape.offset)
        s.sizes = [int(x) for x in m.shape.sizes]
        s.strides = [int(x) for x in m.shape.strides]
        env.shape = s
    parts = []
    for mp in m.parts:
        p = Part()
        p.rank, p.error, p.length, p.buffers, p.last = int(mp.rank), bool(mp.error), int(mp.length), int(mp.buffers), bool(mp.last)
        parts.append(p)
    env.parts = parts

    def hops(lst: Any, depth: int) -> list[Hop]:
        if depth > 64:
            raise ProtocolError("envelope: cast tree nested too deeply")
        out = []
        for mh in lst:
            h = Hop()
            h.addr, h.seq, h.ranks = str(mh.addr), int(mh.seq), [int(x) for x in mh.ranks]
            h.forward = hops(mh.forward, depth + 1)
            out.append(h)
        return out

    env.forward = hops(m.forward, 0)
    if m._has("segment"):
        seg = Segment()
        seg.id, seg.size = int(m.segment.id), int(m.segment.size)
        env.segment = seg
    return env
