"""Payload codecs: how an endpoint's arguments and results become bytes plus out-of-band buffers.

Two codecs exist: :class:`PickleCodec` for plain Python endpoints (pickle protocol 5, cloudpickle
for ``__main__`` objects and lambdas, tensors and large buffers out of band) and the Cap'n Proto
codec of generated endpoints (``monarch._idl``). The runtime only sees the :class:`Codec` protocol.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

__all__ = ["ENCODING_CAPNP", "ENCODING_PICKLE", "Buffers", "Codec", "Encoded"]

ENCODING_PICKLE = 0
ENCODING_CAPNP = 1

Buffers = Sequence[memoryview | bytes | bytearray]
# (payload, out-of-band buffers); buffers travel after the envelope and arrive as writable views
Encoded = tuple["bytes | memoryview | bytearray", list[Any]]


class Codec(Protocol):
    """Encodes one endpoint's calls and results.

    ``encode_*`` run in the sending thread; ``decode_*`` in the receiving process, where
    ``payload`` and ``buffers`` are views over the received frame (valid for as long as the
    decoded objects reference them: decoders may return zero-copy views).
    """

    encoding: int

    def encode_call(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Encoded: ...

    def decode_call(self, payload: memoryview, buffers: list[memoryview]) -> tuple[tuple[Any, ...], dict[str, Any]]: ...

    def encode_result(self, value: Any) -> Encoded: ...

    def decode_result(self, payload: memoryview, buffers: list[memoryview]) -> Any: ...
