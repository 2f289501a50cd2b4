"""The envelope's object model: ``Envelope``, ``Hop``, ``Part``, ``Shape``, ``Segment``.

Plain Python objects with the schema's attribute names and defaults
(``idl/monarch/envelope.capnp``) and the subset of pycapnp's builder API the runtime uses
(``new_message``, ``init``, ``clear_write_flag``, ``to_bytes``). One class serves as builder
and reader: unset fields read as the schema defaults; a decoded message's lists are Python
lists, its ``Data`` is ``bytes``, its enum the enumerant's name. Encoding lives in
``encoder.py``, decoding in ``reader.py``/``decoder.py``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["NO_SHAPE", "Envelope", "FrozenShape", "Hop", "Part", "Segment", "Shape"]


class Shape:
    """``Shape`` struct: the sliced mesh a message was sent to."""

    labels: Any = ()
    offset = 0
    sizes: Any = ()
    strides: Any = ()

    def __repr__(self) -> str:
        return f"Shape(labels={list(self.labels)}, offset={self.offset}, sizes={list(self.sizes)}, strides={list(self.strides)})"


class FrozenShape(Shape):
    """A read-only shape: the value of an unset ``shape`` field, and decoded shapes, which are
    shared between the messages that carry the same bytes."""

    def __init__(self, labels: Any = (), offset: int = 0, sizes: Any = (), strides: Any = ()) -> None:
        d = self.__dict__
        d["labels"], d["offset"], d["sizes"], d["strides"] = labels, offset, sizes, strides

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("a received shape is read-only; init('shape') on a builder instead")


NO_SHAPE = FrozenShape()


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
    shape: Any = NO_SHAPE
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



def _encode(d: dict[str, Any]) -> bytearray:
    """Bound to ``encoder.encode`` on first use (the encoder imports this module)."""
    global _encode
    from .encoder import encode

    _encode = encode
    return encode(d)
