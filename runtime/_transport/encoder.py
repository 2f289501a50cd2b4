"""The envelope encoder: ``Envelope`` fields -> Cap'n Proto bytes, and templates.

Writes one-segment, stream-framed messages with ``struct``, the layout taken from ``wire.py``
(derived from ``envelope.capnp``). Texts and shapes are cached as position-independent blobs
(Cap'n Proto pointers are relative): names, addresses and mesh slices repeat on every message.
Fields that repeat from message to message are laid out first and the varying ones last, so the
receiver can recognise and reuse a decoded prefix (``decoder.py``).

Cap'n Proto encoding reference: https://capnproto.org/encoding.html
"""

from __future__ import annotations

import struct
from typing import Any

from .._core.errors import SchemaError
from .messages import KIND_CODE
from .model import NO_SHAPE, Envelope
from .wire import (
    DATA_AT,
    ENV_DATA_FORMAT,
    ENVELOPE,
    ENVELOPE_POINTERS,
    FIXED,
    HOP_ADDR,
    HOP_FORWARD,
    HOP_RANKS,
    HOP_SEQ_FORMAT,
    HOP_SIZE,
    PART_ERROR_BIT,
    PART_FORMAT,
    PART_LAST_BIT,
    PART_SIZE,
    SEGMENT,
    SEGMENT_FORMAT,
    SHAPE,
    SHAPE_LABELS,
    SHAPE_OFFSET_FORMAT,
    SHAPE_SIZE,
    SHAPE_SIZES,
    SHAPE_STRIDES,
    TEXT_POINTERS,
    VARIABLE_POINTERS,
    data_at,
    ptr_at,
    ptr_hi,
)

__all__ = ["ROOT", "WRITERS", "EnvelopeTemplate", "encode", "encode_reply", "shape_blob", "text_entry"]

W = struct.Struct("<II")  # one pointer word as (low half, high half); also the stream header
ROOT = W.pack(0, ptr_hi(ENVELOPE))  # the root pointer of every message we write
_W = W
_ENV_DATA = struct.Struct(ENV_DATA_FORMAT)  # wire.ENV_DATA_NAMES
_HOP_DATA = struct.Struct(HOP_SEQ_FORMAT)
_PART = struct.Struct(PART_FORMAT)  # rank, bools, length, buffers
_SHAPE_OFFSET = struct.Struct(SHAPE_OFFSET_FORMAT)
_ERR = PART_ERROR_BIT
_LAST = PART_LAST_BIT
_ZEROS = bytes(64)
_KIND_CODE = KIND_CODE


def _list_ptr(buf: bytearray, pos: int, esize: int, count: int) -> None:
    _W.pack_into(buf, pos, ((len(buf) - pos - 8) >> 1) | 1, (count << 3) | esize)


_TEXTS: dict[str, tuple[int, bytes]] = {}


def text_entry(s: str) -> tuple[int, bytes]:
    """(high pointer word, NUL-terminated padded bytes) of a text, cached: names and addresses
    repeat on every message."""
    b = s.encode()
    entry = (((len(b) + 1) << 3) | 2, b + _ZEROS[: 8 - (len(b) & 7)])
    if len(_TEXTS) > 4096:
        _TEXTS.clear()
    _TEXTS[s] = entry
    return entry


def _w_text(buf: bytearray, pos: int, s: str) -> None:
    entry = _TEXTS.get(s) or text_entry(s)
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
        buf += pack(p.rank, (_ERR if p.error else 0) | (_LAST if p.last else 0), p.length, p.buffers)


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
            _w_text(buf, p + 8 * HOP_ADDR, h.addr)
        _w_u32s(buf, p + 8 * HOP_RANKS, h.ranks)
        _w_hops(buf, p + 8 * HOP_FORWARD, h.forward)


_SHAPE_PTR_HI = ptr_hi(SHAPE)
_SHAPES: dict[tuple[Any, ...], bytes] = {}


def shape_blob(s: Any) -> bytes:
    """The struct and everything it points to, position-independent (pointers inside are
    relative), so one encoding serves every message sent to the same slice."""
    key = (tuple(s.labels), s.offset, tuple(s.sizes), tuple(s.strides))
    blob = _SHAPES.get(key)
    if blob is not None:
        return blob
    dw, pc = SHAPE_SIZE
    buf = bytearray(8 * (dw + pc))
    _SHAPE_OFFSET.pack_into(buf, 0, s.offset)
    p = 8 * dw
    labels = key[0]
    if labels:
        n = len(labels)
        _list_ptr(buf, p + 8 * SHAPE_LABELS, 6, n)
        lp = len(buf)
        buf += bytes(8 * n)
        for i, label in enumerate(labels):
            _w_text(buf, lp + 8 * i, label)
    _w_u32s(buf, p + 8 * SHAPE_SIZES, key[2])
    _w_u32s(buf, p + 8 * SHAPE_STRIDES, key[3])
    blob = bytes(buf)
    if len(_SHAPES) > 4096:
        _SHAPES.clear()
    _SHAPES[key] = blob
    return blob


def _w_shape_field(buf: bytearray, pos: int, s: Any) -> None:
    if s is NO_SHAPE:
        return
    blob = shape_blob(s)
    _W.pack_into(buf, pos, (len(buf) - pos - 8) >> 1, _SHAPE_PTR_HI)
    buf += blob


def _w_text_field(buf: bytearray, pos: int, s: str) -> None:
    if s:
        entry = _TEXTS.get(s) or text_entry(s)
        _W.pack_into(buf, pos, ((len(buf) - pos - 8) >> 1) | 1, entry[0])
        buf += entry[1]


_SEGMENT = struct.Struct(SEGMENT_FORMAT)
_SEGMENT_PTR_HI = ptr_hi(SEGMENT)


def _w_segment(buf: bytearray, pos: int, seg: Any) -> None:
    _W.pack_into(buf, pos, (len(buf) - pos - 8) >> 1, _SEGMENT_PTR_HI)
    buf += _SEGMENT.pack(seg.id, seg.size)


_WRITE_FN = {
    "origin": _w_text_field,
    "actor": _w_text_field,
    "ranks": _w_u32s,
    "endpoint": _w_text_field,
    "replyAddr": _w_text_field,
    "payload": _w_data,
    "buffers": _w_u64s,
    "forward": _w_hops,
    "shape": _w_shape_field,
    "parts": _w_parts,
    "sender": _w_text_field,
    "shm": _w_u64s,
    "segment": _w_segment,
}
if set(_WRITE_FN) != set(ENVELOPE_POINTERS):
    raise SchemaError("envelope.capnp", 1, 1, f"the encoder writes {sorted(_WRITE_FN)}, the schema has {ENVELOPE_POINTERS}")
#: pointer field -> (byte position in an encoded message, writer)
WRITERS = {name: (ptr_at(name), fn) for name, fn in _WRITE_FN.items()}


_PAYLOAD_PTR_AT = ptr_at("payload")
_BUFFERS_PTR_AT = ptr_at("buffers")
_SHM_PTR_AT = ptr_at("shm")


def encode(d: dict[str, Any]) -> bytearray:
    """The envelope whose set fields are ``d`` (an ``Envelope.__dict__``), stream-framed."""
    buf = bytearray(FIXED)
    buf[8:16] = ROOT
    kind = d.get("kind", "call")
    code = _KIND_CODE.get(kind) if isinstance(kind, str) else None
    _ENV_DATA.pack_into(
        buf,
        DATA_AT,
        int(kind) if code is None else code,
        d.get("encoding", 0),
        d.get("flags", 0),
        d.get("seq", 0),
        d.get("port", 0),
        d.get("replyPort", 0),
    )
    # fields that repeat from message to message first, those that vary last: the receiver
    # recognises the repeating prefix (see decoder.py)
    get = d.get
    for name, pos, write in _ORDER:
        value = get(name)
        if value is not None:
            write(buf, pos, value)
    _W.pack_into(buf, 0, 0, (len(buf) - 8) >> 3)
    return buf


_STATIC_POINTERS = tuple(n for n in ENVELOPE_POINTERS if n not in VARIABLE_POINTERS and n != "segment")
_ORDER = tuple(
    (name, WRITERS[name][0], WRITERS[name][1])
    for name in (*(n for n in _STATIC_POINTERS if n in TEXT_POINTERS), *(n for n in _STATIC_POINTERS if n not in TEXT_POINTERS), *VARIABLE_POINTERS, "segment")
)


_Q = struct.Struct("<Q")
_SEQ_AT = data_at("seq")
_REPLY_PORT_AT = data_at("replyPort")
if ENVELOPE.data("seq").bits != 64 or ENVELOPE.data("replyPort").bits != 64:
    raise SchemaError("envelope.capnp", 1, 1, "the template writes seq and replyPort as UInt64")


class EnvelopeTemplate:
    """An envelope encoded once for many messages that differ only in ``seq``, ``replyPort``,
    ``payload`` and ``buffers`` (the calls of one endpoint to one slice of a mesh).

    ``encode`` copies the prefix and appends the variable parts: ~1 us instead of building and
    encoding the whole envelope on every call.
    """

    __slots__ = ("_prefix",)

    def __init__(self, env: Envelope) -> None:
        d = {k: v for k, v in env.__dict__.items() if k not in ("seq", "replyPort", *VARIABLE_POINTERS)}
        self._prefix = bytes(encode(d))

    def encode(
        self, seq: int, reply_port: int, payload: Any, buffer_lengths: list[int], shm: list[int] | None = None
    ) -> bytearray:
        """One message: the prefix with ``seq``, ``replyPort``, ``payload`` and the out-of-band
        buffers' lengths (and shared-memory segment ids, 0 = inline) filled in."""
        buf = bytearray(self._prefix)
        if seq:
            _Q.pack_into(buf, _SEQ_AT, seq)
        if reply_port:
            _Q.pack_into(buf, _REPLY_PORT_AT, reply_port)
        _w_data(buf, _PAYLOAD_PTR_AT, payload)
        return _finish(buf, buffer_lengths, shm)


def _finish(buf: bytearray, buffer_lengths: list[int], shm: list[int] | None) -> bytearray:
    """Append the out-of-band buffers' lengths and segment ids (the last pointers), then frame."""
    if buffer_lengths:
        _w_u64s(buf, _BUFFERS_PTR_AT, buffer_lengths)
        if shm:
            _w_u64s(buf, _SHM_PTR_AT, shm)
    _W.pack_into(buf, 0, 0, (len(buf) - 8) >> 3)
    return buf


_PORT_AT = data_at("port")
_FLAGS_AT = data_at("flags")
_PARTS_PTR_AT = ptr_at("parts")
_FLAGS = struct.Struct(ENVELOPE.data_format(("flags",), ENVELOPE.data("flags").byte_offset))
if ENVELOPE.data("port").bits != 64:
    raise SchemaError("envelope.capnp", 1, 1, "the reply encoder writes port as UInt64")
_REPLY_PREFIX = bytes(encode({"kind": "reply"}))
_ONE_PART_HEAD = _W.pack(1 << 2, PART_SIZE[0])  # the tag word of a composite list of one Part


def encode_reply(
    port: int, rank: int, error: bool, last: bool, flags: int, payload: Any, buffer_lengths: list[int], shm: list[int] | None
) -> bytearray:
    """A ``reply`` envelope carrying one ``Part`` (one rank's result), stream-framed.

    The bytes equal :func:`encode` of the same fields (a test checks it); written directly, as
    every call's answer takes this path: ~1 us instead of building an ``Envelope`` and walking
    every field.

    Args:
        port: the caller's reply port.
        rank: the answering rank's position in the called mesh (``Part.rank``).
        error: ``payload`` is an encoded error.
        last: the last part of this rank (streams send several).
        flags: ``Envelope.flags`` bits (``END_OF_STREAM`` for an end marker).
        payload: the encoded result; its length becomes ``Part.length``.
        buffer_lengths: byte length of each out-of-band buffer (``Part.buffers`` is their count).
        shm: shared-memory segment id per buffer (0 = inline), or None.
    """
    buf = bytearray(_REPLY_PREFIX)
    _Q.pack_into(buf, _PORT_AT, port)
    if flags:
        _FLAGS.pack_into(buf, _FLAGS_AT, flags)
    n = len(payload) if type(payload) is bytes else memoryview(payload).nbytes
    _W.pack_into(buf, _PARTS_PTR_AT, ((len(buf) - _PARTS_PTR_AT - 8) >> 1) | 1, (PART_SIZE[0] << 3) | 7)
    buf += _ONE_PART_HEAD
    buf += _PART.pack(rank, (_ERR if error else 0) | (_LAST if last else 0), n, len(buffer_lengths))
    if n:
        _w_data(buf, _PAYLOAD_PTR_AT, payload)
    return _finish(buf, buffer_lengths, shm)
