"""Byte positions of the envelope on the wire, every one derived from ``envelope.capnp``.

An encoded envelope is one stream-framed single-segment message::

    [8: segment table][8: root struct pointer][data words][pointer words][objects...]

The encoder and reader (``encoder.py``, ``reader.py``, ``decoder.py``) address fields through the
constants below, computed from :mod:`~monarch._transport.layout` at import. The hand-written
fast paths pass a few fields to ``struct`` in a fixed order; :func:`_check_order` fails the
import with a clear message if a schema change ever reorders them.
"""

from __future__ import annotations

import struct

from .._core.errors import SchemaError
from .layout import StructLayout, load_envelope_layout
from .messages import KIND_BY_CODE

__all__ = [
    "ENVELOPE",
    "ENVELOPE_POINTERS",
    "ENVELOPE_SIZE",
    "HOP",
    "HOP_SIZE",
    "KINDS",
    "PART",
    "PART_SIZE",
    "SEGMENT",
    "SEGMENT_SIZE",
    "SHAPE",
    "SHAPE_SIZE",
]

_STRUCTS, _ENUMS = load_envelope_layout()
ENVELOPE: StructLayout = _STRUCTS["Envelope"]
HOP: StructLayout = _STRUCTS["Hop"]
PART: StructLayout = _STRUCTS["Part"]
SHAPE: StructLayout = _STRUCTS["Shape"]
SEGMENT: StructLayout = _STRUCTS["Segment"]

#: Kind enumerants in ordinal order (plain strings: cheaper to hash than ``Kind`` members)
KINDS: tuple[str, ...] = _ENUMS["Kind"]
if KINDS != tuple(k.value for k in KIND_BY_CODE):
    raise SchemaError("envelope.capnp", 1, 1, f"enum Kind {KINDS} does not match messages.Kind")


def _size(s: StructLayout) -> tuple[int, int]:
    return (s.data_words, s.pointer_count)


ENVELOPE_SIZE = _size(ENVELOPE)
HOP_SIZE = _size(HOP)
PART_SIZE = _size(PART)
SHAPE_SIZE = _size(SHAPE)
SEGMENT_SIZE = _size(SEGMENT)
#: Envelope pointer fields by pointer index
ENVELOPE_POINTERS = ENVELOPE.pointer_names()


def _check_order(s: StructLayout, names: tuple[str, ...], start: int = 0) -> str:
    """The data format of ``names`` (see ``StructLayout.data_format``), or SchemaError."""
    try:
        return s.data_format(names, start)
    except (KeyError, ValueError) as exc:
        raise SchemaError(
            "envelope.capnp", 1, 1, f"the envelope codec's fast path no longer fits the schema: {exc}"
        ) from None


def ptr_hi(s: StructLayout) -> int:
    """The high word of a struct pointer to ``s`` (data words | pointer count << 16)."""
    return s.data_words | (s.pointer_count << 16)


# -- Envelope ---------------------------------------------------------------------------------
HEADER = 8  # the segment table of a one-segment message
DATA_AT = HEADER + 8  # the root struct's data section, in an encoded message
PTRS_AT = DATA_AT + 8 * ENVELOPE.data_words  # its pointer section
FIXED = PTRS_AT + 8 * ENVELOPE.pointer_count  # header + root pointer + root struct


def ptr_at(name: str) -> int:
    """Byte position of Envelope pointer field ``name`` in an encoded message."""
    return PTRS_AT + 8 * ENVELOPE.ptr(name)


def data_at(name: str) -> int:
    """Byte position of Envelope data field ``name`` in an encoded message."""
    return DATA_AT + ENVELOPE.data(name).byte_offset


#: all data fields, in the order the encoder and full decoder pass them
ENV_DATA_NAMES = ("kind", "encoding", "flags", "seq", "port", "replyPort")
ENV_DATA_FORMAT = _check_order(ENVELOPE, ENV_DATA_NAMES)
_ENV_DATA_BYTES = struct.calcsize(ENV_DATA_FORMAT)
if _ENV_DATA_BYTES > 8 * ENVELOPE.data_words:
    raise SchemaError("envelope.capnp", 1, 1, "Envelope data fields overrun the data section")
#: the fields that vary from message to message of one template, in offset order
ENV_VAR_DATA_NAMES = ("seq", "port", "replyPort")
ENV_VAR_DATA_AT = data_at(ENV_VAR_DATA_NAMES[0])
ENV_VAR_DATA_FORMAT = _check_order(ENVELOPE, ENV_VAR_DATA_NAMES, ENVELOPE.data(ENV_VAR_DATA_NAMES[0]).byte_offset)
#: pointer fields that vary from message to message of one template
VARIABLE_POINTERS = ("parts", "payload", "buffers", "shm")
TEXT_POINTERS = ("origin", "actor", "endpoint", "replyAddr", "sender")


def _kept_words() -> tuple[tuple[int, bool], ...]:
    """``(byte position, kept)`` of every word of the root struct: kept are the words a
    template fixes (data words without a varying field, pointers of static fields)."""
    out: list[tuple[int, bool]] = []
    for word in range(ENVELOPE.data_words):
        names = {f.name for f in ENVELOPE.fields.values() if not f.pointer and f.byte_offset // 8 == word}
        if names & set(ENV_VAR_DATA_NAMES) and names - set(ENV_VAR_DATA_NAMES):
            raise SchemaError("envelope.capnp", 1, 1, f"Envelope data word {word} mixes fixed and varying fields")
        out.append((DATA_AT + 8 * word, bool(names) and not names & set(ENV_VAR_DATA_NAMES)))
    for name in ENVELOPE_POINTERS:
        out.append((ptr_at(name), name not in VARIABLE_POINTERS and name != "segment"))
    return tuple(out)


_KEPT = _kept_words()
#: a struct format over an encoded message reading the kept words (the prefix cache's key)
PREFIX_KEY_FORMAT = "<16x" + "".join("Q" if kept else "8x" for _, kept in _KEPT)


def _static_ranges() -> tuple[tuple[int, int], ...]:
    ranges: list[list[int]] = []
    for pos, kept in _KEPT:
        if not kept:
            continue
        if ranges and ranges[-1][1] == pos:
            ranges[-1][1] = pos + 8
        else:
            ranges.append([pos, pos + 8])
    return tuple((a, b) for a, b in ranges)


#: byte ranges of an encoded message that a template fixes (compared when reusing a prefix)
STATIC_RANGES = _static_ranges()


# -- the other structs ------------------------------------------------------------------------
HOP_SEQ_FORMAT = _check_order(HOP, ("seq",))
HOP_ADDR, HOP_RANKS, HOP_FORWARD = (HOP.ptr(n) for n in ("addr", "ranks", "forward"))

PART_INT_NAMES = ("rank", "length", "buffers")
for _n in ("error", "last"):
    if PART.data(_n).byte_offset != PART.data("error").byte_offset:
        raise SchemaError("envelope.capnp", 1, 1, "Part's bools must share one byte")


def _part_format() -> str:
    """``rank, bools, length, buffers`` with the byte of Part's two bools in its place."""
    slots = sorted(
        [(PART.data(n).byte_offset, n, PART.data(n).bits // 8) for n in PART_INT_NAMES]
        + [(PART.data("error").byte_offset, "bools", 1)]
    )
    if [n for _, n, _ in slots] != ["rank", "bools", "length", "buffers"]:
        raise SchemaError("envelope.capnp", 1, 1, "the Part fast path no longer fits the schema")
    codes = {1: "B", 4: "I"}
    fmt, pos = "<", 0
    for off, _name, size in slots:
        if off > pos:
            fmt += f"{off - pos}x"
        fmt += codes[size]
        pos = off + size
    return fmt


PART_FORMAT = _part_format()
PART_ERROR_BIT = 1 << PART.data("error").bit
PART_LAST_BIT = 1 << PART.data("last").bit

SHAPE_OFFSET_FORMAT = _check_order(SHAPE, ("offset",))
SHAPE_LABELS, SHAPE_SIZES, SHAPE_STRIDES = (SHAPE.ptr(n) for n in ("labels", "sizes", "strides"))

SEGMENT_FORMAT = _check_order(SEGMENT, ("id", "size"))
