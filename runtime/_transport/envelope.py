"""The wire envelope (``idl/monarch/envelope.capnp``), encoded and decoded without pycapnp.

Every frame starts with one ``Envelope`` in standard Cap'n Proto stream framing. Building and
reading it through pycapnp costs ~9 us and ~19 us per message; the codec here writes and reads
the same bytes with ``struct`` in a few microseconds, so the ``capnp`` tool and pycapnp decode
our frames and we decode theirs. It is split by concept:

- ``layout.py``: parses ``envelope.capnp`` and lays its structs out (Cap'n Proto's algorithm);
- ``wire.py``: every byte position and ``struct`` format the codec uses, derived from it;
- ``model.py``: the objects (:class:`Envelope`, :class:`Hop`, :class:`Part`, :class:`Shape`,
  :class:`Segment`), with the schema's attribute names and defaults;
- ``encoder.py``: encoding, :class:`EnvelopeTemplate`;
- ``reader.py``: bounds-checked decoding; ``decoder.py``: :func:`decode_envelope` and the
  prefix cache; ``capnp_fallback.py``: what only pycapnp reads (several segments, far pointers).

This module re-exports the names the rest of the runtime uses.
"""

from __future__ import annotations

from .capnp_fallback import load_schema
from .decoder import decode_envelope
from .encoder import WRITERS as _WRITERS
from .encoder import EnvelopeTemplate
from .encoder import W as _W
from .model import Envelope, Hop, Part, Segment, Shape
from .wire import (
    ENVELOPE_POINTERS,
    ENVELOPE_SIZE,
    HOP_SIZE,
    KINDS,
    PART_SIZE,
    SEGMENT_SIZE,
    SHAPE_SIZE,
)

__all__ = [
    "ENVELOPE_POINTERS",
    "ENVELOPE_SIZE",
    "HOP_SIZE",
    "KINDS",
    "PART_SIZE",
    "SEGMENT_SIZE",
    "SHAPE_SIZE",
    "Envelope",
    "EnvelopeTemplate",
    "Hop",
    "Part",
    "Segment",
    "Shape",
    "decode_envelope",
    "load_schema",
]

_ = (_W, _WRITERS)  # for tests that patch raw words
