"""The slow path of envelope decoding, through pycapnp: any valid message it reads.

Only messages our encoder never writes get here (several segments, far pointers, other list
encodings), so pycapnp is imported on first need, never on the hot path. :func:`load_schema`
also serves tools and tests that want pycapnp's view of ``envelope.capnp``.
"""

from __future__ import annotations

import os
from typing import Any

from .._core.errors import ProtocolError
from .messages import KIND_CODE
from .model import Envelope, Hop, Part, Segment, Shape

__all__ = ["decode_with_pycapnp", "from_capnp", "load_schema"]

_PARSER: Any = None  # pycapnp schemas must not outlive their parser: keep it
_SCHEMA: Any = None


def load_schema() -> Any:
    """The pycapnp module of ``envelope.capnp`` (imports pycapnp, ~80 ms; tools and tests)."""
    global _PARSER, _SCHEMA
    if _SCHEMA is None:
        import capnp
        import monarch.idl

        path = os.path.join(os.path.dirname(monarch.idl.__file__ or ""), "monarch", "envelope.capnp")
        _PARSER = capnp.SchemaParser()
        _SCHEMA = _PARSER.load(path)
    return _SCHEMA


def decode_with_pycapnp(raw: bytes) -> Envelope:
    """Decode any valid envelope pycapnp reads.

    Raises:
        ProtocolError: pycapnp cannot read it either.
    """
    schema = load_schema()
    try:
        with schema.Envelope.from_bytes(bytes(raw), traversal_limit_in_words=max(len(raw), 64)) as m:
            return from_capnp(m)
    except ProtocolError:
        raise
    except Exception as exc:  # capnp raises KjException with no finer type
        raise ProtocolError(f"malformed envelope: {exc}") from None


def from_capnp(m: Any) -> Envelope:
    env = Envelope()
    kind = str(m.kind)
    env.kind = kind if kind in KIND_CODE else int(kind) if kind.isdigit() else kind
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
