"""Decoding received envelopes: the entry point and the prefix cache.

Messages built from one ``EnvelopeTemplate`` (or by the encoder from the same static fields)
share a prefix: the data words but the varying ones, the pointer words but those of the varying
fields, and the objects they point to, laid out before the varying ones. Such a prefix, once
decoded, is looked up by its pointer words and compared byte for byte; then only the varying
fields are read. Everything compared is relative (Cap'n Proto pointers are), so equal bytes
decode to equal fields. Positions come from ``wire.py``.
"""

from __future__ import annotations

import struct
from typing import Any

from .._core.errors import ProtocolError
from .encoder import ROOT, W, encode
from .messages import KIND_CODE, TRANSPORT_KINDS
from .model import Envelope, Part
from .reader import Reader, Unsupported, decode_full, read_parts
from .wire import (
    DATA_AT,
    ENV_VAR_DATA_AT,
    ENV_VAR_DATA_FORMAT,
    ENV_VAR_DATA_NAMES,
    ENVELOPE,
    FIXED,
    PART,
    PART_ERROR_BIT,
    PART_FORMAT,
    PART_LAST_BIT,
    PART_SIZE,
    PREFIX_KEY_FORMAT,
    STATIC_RANGES,
    VARIABLE_POINTERS,
    ptr_at,
    ptr_hi,
)

__all__ = ["decode_envelope"]

_PART = struct.Struct(PART_FORMAT)
_ERR = PART_ERROR_BIT
_LAST = PART_LAST_BIT
_U64 = struct.Struct("<Q")
_PARTS_PTR_AT = ptr_at("parts")
_PAYLOAD_PTR_AT = ptr_at("payload")
_BUFFERS_PTR_AT = ptr_at("buffers")
_SHM_PTR_AT = ptr_at("shm")
_KIND_BYTE = ENVELOPE.data("kind").byte_offset  # kind < 256: its low byte is enough
_TRANSPORT_KIND_CODES = frozenset(KIND_CODE[k] for k in TRANSPORT_KINDS)
# one compare tells that neither out-of-band list is set (the words between may be anything)
_BS_LO = min(_BUFFERS_PTR_AT, _SHM_PTR_AT)
_BS_HI = max(_BUFFERS_PTR_AT, _SHM_PTR_AT) + 8
_BS_ZEROS = bytes(_BS_HI - _BS_LO)
_ZERO_WORD = bytes(8)


def decode_envelope(raw: bytes) -> Envelope:
    """Read one stream-framed ``Envelope`` (the whole message, header included).

    Raises:
        ProtocolError: the bytes are not a valid envelope.
    """
    try:
        if len(raw) >= FIXED and raw[8:16] == ROOT:
            hit = _PREFIXES.get(_PREFIX_KEY.unpack_from(raw, 0))
            if hit is not None and raw[FIXED : hit[0]] == hit[1]:
                return _decode_cached(raw, hit)
            env = decode_full(raw)
            _remember_prefix(raw, env)
            return env
        return decode_full(raw)
    except Unsupported:
        from .capnp_fallback import decode_with_pycapnp

        return decode_with_pycapnp(raw)
    except (struct.error, IndexError, ValueError, OverflowError) as exc:
        raise ProtocolError(f"malformed envelope: {exc}") from None


_PREFIX_KEY = struct.Struct(PREFIX_KEY_FORMAT)
_VAR_DATA = struct.Struct(ENV_VAR_DATA_FORMAT)  # wire.ENV_VAR_DATA_NAMES
_PREFIXES: dict[tuple[int, ...], tuple[int, bytes, dict[str, Any]]] = {}


def _remember_prefix(raw: bytes, env: Envelope) -> None:
    d = env.__dict__
    if "segment" in d or raw[DATA_AT + _KIND_BYTE] in _TRANSPORT_KIND_CODES:
        return  # transport frames are rare and carry per-frame structs: always decoded in full
    static = {k: v for k, v in d.items() if k not in (*ENV_VAR_DATA_NAMES, *VARIABLE_POINTERS)}
    prefix = encode(static)
    n = len(prefix)
    if raw[FIXED:n] != prefix[FIXED:]:
        return  # laid out by another encoder: decode such messages in full
    for a, b in STATIC_RANGES:
        if raw[a:b] != prefix[a:b]:
            return
    for k in ("ranks",):
        if k in static:
            static[k] = tuple(static[k])
    if len(_PREFIXES) > 1024:
        _PREFIXES.clear()
    _PREFIXES[_PREFIX_KEY.unpack_from(raw, 0)] = (n, bytes(prefix[FIXED:]), static)


def _decode_cached(raw: bytes, hit: tuple[int, bytes, dict[str, Any]]) -> Envelope:
    nseg, words = W.unpack_from(raw, 0)
    end = 8 + 8 * words
    if nseg != 0 or end > len(raw) or end < hit[0]:
        return decode_full(raw)
    env = Envelope()
    d = env.__dict__
    d.update(hit[2])
    seq, port, rport = _VAR_DATA.unpack_from(raw, ENV_VAR_DATA_AT)
    if seq:
        d["seq"] = seq
    if port:
        d["port"] = port
    if rport:
        d["replyPort"] = rport
    # the bounds-checked reader, made only when a field leaves the inlined paths (one per
    # message: its traversal budget is shared by every field read through it)
    r: Reader | None = None
    budget = 8 * words + 64
    w = _U64.unpack_from(raw, _PARTS_PTR_AT)[0]
    if w:
        if w & _ONE_PART_MASK == _ONE_PART_PTR_HI:
            # one Part, the common reply: inlined
            t = _PARTS_PTR_AT + 8 + 8 * ((w & 0xFFFFFFFF) >> 2)
            if t + 8 + 8 * _PART_WORDS > end or raw[t : t + 8] != _ONE_PART_TAG:
                r = Reader(raw, end, budget)
                d["parts"] = read_parts(r, _PARTS_PTR_AT)
            else:
                rank, bits, length, nbuf = _PART.unpack_from(raw, t + 8)
                part = Part()
                pd = part.__dict__
                pd["rank"], pd["error"], pd["length"], pd["buffers"], pd["last"] = rank, bool(bits & _ERR), length, nbuf, bool(bits & _LAST)
                d["parts"] = [part]
        else:
            r = Reader(raw, end, budget)
            d["parts"] = read_parts(r, _PARTS_PTR_AT)
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
            if r is None:
                r = Reader(raw, end, budget)
            d["payload"] = r.data(_PAYLOAD_PTR_AT)
    if raw[_BS_LO:_BS_HI] != _BS_ZEROS:
        if r is None:
            r = Reader(raw, end, budget)
        if raw[_BUFFERS_PTR_AT : _BUFFERS_PTR_AT + 8] != _ZERO_WORD:
            d["buffers"] = r.u64s(_BUFFERS_PTR_AT)
        if raw[_SHM_PTR_AT : _SHM_PTR_AT + 8] != _ZERO_WORD:
            d["shm"] = r.u64s(_SHM_PTR_AT)
    return env


# a list pointer to a composite list of one Part, with a non-negative offset < 2**29
_PART_WORDS = PART_SIZE[0] + PART_SIZE[1]
_ONE_PART_PTR_HI = ((_PART_WORDS << 3) | 7) << 32 | 1
# the high word, the pointer kind (list) and the offset's sign bit; the offset itself may be any
# non-negative value (the old mask also took the offset's lowest bit, missing odd offsets)
_ONE_PART_MASK = 0xFFFFFFFF80000003
_ONE_PART_TAG = W.pack(1 << 2, ptr_hi(PART))
