"""Field converters: how one schema type moves between Python values and pycapnp builders/readers.

Generated structs describe each field's type with a small expression (``"Int32"``,
``"List(Struct(Item))"``, ``"Ref(WorkerMesh)"``, ``"Adapted(0x...)"``); :func:`compile_type` turns it into a converter
the first time the class is used. Names inside the expression are resolved in the generated
module's namespace, so classes may be defined in any order.

Out-of-band convention (the Cap'n Proto payload codec): a ``Data`` field, a ``$tensor`` field or
the data of an ``M.Tensor`` whose size is at least :data:`OOB_THRESHOLD_BYTES` is left unset in
the message (a member of an unnamed union is set to an empty Data, so that the discriminant names
it) and travels as an out-of-band buffer instead. When any buffer travels so, one more
buffer follows the others: the *directory*, the UTF-8 field paths of the buffers, one per line,
in order (``blob``, ``items.3.data``: wire names and list indices from the root struct). The
receiver maps a path back to its buffer and returns a view of it, never a copy.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Sequence
from typing import Any

from ._adapters import StructAdapter, get_adapter

__all__ = [
    "OOB_THRESHOLD_BYTES",
    "Conv",
    "DecodeContext",
    "EncodeContext",
    "FieldValueError",
    "compile_type",
]

OOB_THRESHOLD_BYTES = 4096
"""Data of at least this many bytes travels out of band (when the codec allows it)."""

_PRIMS = frozenset(
    "Bool Int8 Int16 Int32 Int64 UInt8 UInt16 UInt32 UInt64 Float32 Float64 Text".split()
)
_CALL = re.compile(r"^(\w+)\((.*)\)$")


_WRAPPED = re.compile(r"^(?:Struct|Group|Enum|Ref)\((.+)\)$")


class FieldValueError(TypeError, ValueError):
    """A value that a field of a generated struct cannot hold, found while encoding it.

    A ``TypeError`` (a value of the wrong kind) and a ``ValueError`` (an integer out of the
    field's range); raised before anything is sent. ``str()`` reads
    ``Worker.train: field 'batch' expects Batch, got str``.

    Attributes:
        field: the field's Python name, dotted through nested structs (``"batch.step"``).
        expected: the field's schema type (``Float32``, ``List(Text)``, a struct's name).
        got: the type name of the value given.
        detail: why pycapnp refused it (``out of range``), or empty.
        where: the endpoint (``Actor.endpoint``) or struct being encoded; empty when unknown.
    """

    def __init__(self, field: str, expected: str, value: Any, detail: str = "") -> None:
        super().__init__(field, expected, value)
        self.field = field
        m = _WRAPPED.match(expected)
        if expected in ("AnyStruct", "AnyPointer"):
            expected = "a generated struct (AnyPointer)"
        elif expected.startswith("Adapted("):
            expected = "an adapted struct"  # the adapter names its Python type in ``detail``
        self.expected = m[1] if m else expected
        self.got = type(value).__qualname__
        self.value_repr = repr(value) if isinstance(value, int | float) else ""
        self.detail = detail
        self.where = ""

    def __str__(self) -> str:
        got = f"{self.got} {self.value_repr}" if self.value_repr else self.got
        detail = f" ({self.detail})" if self.detail else ""
        prefix = f"{self.where}: " if self.where else ""
        return f"{prefix}field {self.field!r} expects {self.expected}, got {got}{detail}"


def field_value_error(field: str, expected: str, value: Any, exc: Exception) -> FieldValueError:
    """Translate what setting ``value`` on a field raised (pycapnp's ``KjException`` with a C++
    stack, or a converter's own error) into a :class:`FieldValueError` naming the field."""
    text = str(exc)
    if isinstance(value, float) and expected.startswith(("Int", "UInt")):
        detail = "not an integer"
    elif "out-of-range" in text or "out of range" in text:
        detail = "out of range"
    elif isinstance(exc, ValueError):
        detail = text  # e.g. an enum value this schema version does not know
    elif isinstance(exc, TypeError) and expected.startswith("Adapted("):
        detail = text  # the adapter's own words: "needs an RDMABuffer, got bytes"
    else:
        detail = ""  # KjException "Value type mismatch", or a converter's TypeError saying the same
    return FieldValueError(field, expected, value, detail)


class EncodeContext:
    """State of one encoding: the out-of-band buffers collected so far and their paths."""

    __slots__ = ("buffers", "oob", "paths")

    def __init__(self, oob: bool) -> None:
        self.oob = oob
        self.buffers: list[Any] = []
        self.paths: list[str] = []

    def put_data(self, b: Any, wire: str, value: Any, path: str) -> None:
        """Write Data field ``wire`` of builder ``b``: in the message, or out of band if large."""
        if self.oob and _nbytes(value) >= OOB_THRESHOLD_BYTES:
            self.buffers.append(value)
            self.paths.append(path + wire)
            if _in_union(b, wire):
                # the discriminant must name this member: an empty Data in the message
                b._set(wire, b"")
        else:
            b._set(wire, value)


_UNION_FIELDS: dict[tuple[int, str], bool] = {}


def _in_union(b: Any, wire: str) -> bool:
    """Whether field ``wire`` of struct builder ``b`` is a member of its unnamed union."""
    schema = b.schema
    key = (schema.node.id, wire)
    known = _UNION_FIELDS.get(key)
    if known is None:
        known = _UNION_FIELDS[key] = schema.fields[wire].proto.discriminantValue != 0xFFFF
    return known


class DecodeContext:
    """What the views of one received message share: the message and the out-of-band buffers.

    Keeping ``reader_cm`` referenced keeps pycapnp's message (and so every reader) valid.
    ``root`` is the message's root reader (None for a view that is no received message's: a
    group's default); :meth:`source` copies from it.
    """

    __slots__ = ("_copy", "buffers", "oob", "payload", "reader_cm", "root")

    def __init__(
        self,
        reader_cm: Any,
        payload: Any,
        buffers: Sequence[Any],
        oob: dict[str, int] | None,
        root: Any = None,
    ) -> None:
        self.reader_cm = reader_cm
        self.payload = payload
        self.buffers = buffers
        self.oob = oob
        self.root = root
        self._copy: Any = None

    def source(self, path: str) -> Any:
        """The builder at ``path`` in a private copy of the message, to copy a received struct
        or list from as Cap'n Proto copies one: its raw content, so fields and union members
        that this schema version does not know survive (the language reference's rule for
        evolving a protocol).

        The copy is made once per message: copying from a reader counts against its
        cumulative traversal limit, so a view forwarded many times would exhaust it; a
        builder has no limit.

        Args:
            path: a view's path (wire names and list indices, each followed by ``.``; ``""``
                is the root).

        Returns:
            A pycapnp struct or list builder; an untyped (``AnyPointer``) builder where the
            path ends at one; None when the message has no root reader or the path crosses an
            untyped pointer.
        """
        if self.root is None:
            return None
        b = self._copy
        if b is None:
            b = self._copy = self.root.as_builder()
        for part in path.split(".")[:-1]:
            if _is_untyped(b):
                return None
            b = b[int(part)] if part.isdigit() else b._get(part)
        return b

    def carry_oob(self, path: str, enc: EncodeContext, target: Any, new_path: str) -> None:
        """Send on the out-of-band buffers under ``path`` of this message with a struct or list
        copied raw to ``target`` (its builder) at ``new_path`` of the message being encoded:
        as out-of-band buffers again (same views, no copy), or written into ``target`` when the
        encoding keeps every Data field in the message (``to_bytes``).

        Raises:
            ValueError: a flat copy (``to_bytes``) of a field that came out of band and that
                this version of the schema does not know: pycapnp writes fields by name only.
        """
        oob = self.oob
        if not oob:
            return
        for p, index in oob.items():
            if not p.startswith(path):
                continue
            rest = p[len(path) :]
            buf = self.buffers[index]
            if enc.oob:
                enc.buffers.append(buf)
                enc.paths.append(new_path + rest)
                continue
            *parts, wire = rest.split(".")
            b = target
            try:
                for part in parts:
                    b = b[int(part)] if part.isdigit() else b._get(part)
                b._set(wire, bytes(_tensor_bytes(buf)))
            except Exception as exc:  # KjException "struct has no such member"
                raise ValueError(
                    f"cannot write field {p!r} into a flat copy: its bytes came out of band and "
                    "this version of the schema does not know the field; send the received "
                    "struct on as it is (its buffers go with it)"
                ) from exc

    def get_data(self, r: Any, wire: str, path: str) -> Any:
        """Read Data field ``wire``: a view of its out-of-band buffer, or the in-message bytes."""
        if self.oob is not None:
            index = self.oob.get(path + wire)
            if index is not None:
                return self.buffers[index]
        return r._get(wire)


def _nbytes(value: Any) -> int:
    if isinstance(value, bytes | bytearray):
        return len(value)
    return memoryview(value).nbytes


class Conv:
    """Converter base: ``set``/``get`` a struct field, ``put``/``take`` a list element."""

    cacheable = True  # views cache the converted value (readers are re-walked otherwise)
    simple = False  # pycapnp takes and returns the Python value as is

    def set(self, b: Any, wire: str, v: Any, enc: EncodeContext, path: str) -> None:
        b._set(wire, v)

    def get(self, r: Any, wire: str, dec: DecodeContext, path: str) -> Any:
        return r._get(wire)

    def put(self, lb: Any, i: int, v: Any, enc: EncodeContext, path: str) -> None:
        lb[i] = v

    def take(self, lr: Any, i: int, dec: DecodeContext, path: str) -> Any:
        return lr[i]


class _Prim(Conv):
    cacheable = False
    simple = True


class _Text(_Prim):
    # a pointer: every read of it counts against the message's traversal limit, so a view read
    # thousands of times (a kept config struct) would exhaust it; str is immutable, so cache it
    cacheable = True


class _Void(Conv):
    cacheable = False
    simple = True

    def get(self, r: Any, wire: str, dec: DecodeContext, path: str) -> Any:
        return None


class _Data(Conv):
    def set(self, b: Any, wire: str, v: Any, enc: EncodeContext, path: str) -> None:
        enc.put_data(b, wire, v, path)

    def get(self, r: Any, wire: str, dec: DecodeContext, path: str) -> Any:
        return dec.get_data(r, wire, path)


TENSOR_REFS: dict[type, Callable[[Any], tuple[str, list[int], list[int]]]] = {}
"""Tensor types that are not sent but referred to: ``monarch.Tensor`` (the tensor engine, layer 5,
registers it before it encodes a call holding one). An ``M.Tensor`` field given one writes the
``(dtype, shape, strides)`` the function returns, and the value itself stands among the
out-of-band buffers in place of the data; the tensor engine pickles the buffers (a handle becomes
a reference) and hands the decoder the receiving rank's local tensor there, which the field then
reads as it is (monarch.tensor._rref)."""


class _TensorData(Conv):
    """A ``$tensor`` Data field: a tensor's raw bytes, received as a 1-D uint8 tensor view."""

    def set(self, b: Any, wire: str, v: Any, enc: EncodeContext, path: str) -> None:
        if type(v) in TENSOR_REFS:
            raise TypeError("a monarch.Tensor handle fills an M.Tensor field, not Data $M.tensor")
        enc.put_data(b, wire, _tensor_bytes(v), path)

    def get(self, r: Any, wire: str, dec: DecodeContext, path: str) -> Any:
        return _bytes_tensor(dec.get_data(r, wire, path), "uint8", None, None)


class _Tensor(Conv):
    """An ``M.Tensor`` struct field: dtype, shape and strides kept."""

    def set(self, b: Any, wire: str, v: Any, enc: EncodeContext, path: str) -> None:
        self._fill(b.init(wire), v, enc, path + wire + ".")

    def put(self, lb: Any, i: int, v: Any, enc: EncodeContext, path: str) -> None:
        self._fill(lb[i], v, enc, f"{path}{i}.")

    @staticmethod
    def _fill(tb: Any, v: Any, enc: EncodeContext, prefix: str) -> None:
        ref = TENSOR_REFS.get(type(v))
        if ref is not None:  # a handle: its metadata here, itself among the buffers
            if not enc.oob:
                raise TypeError("a monarch.Tensor handle can only be sent as an endpoint's argument")
            tb.dtype, tb.shape, tb.strides = ref(v)
            enc.buffers.append(v)
            enc.paths.append(prefix + "data")
            return
        src = v.detach()
        if src.device.type != "cpu":
            src = src.cpu()
        src = src.contiguous()
        tb.dtype = str(src.dtype).removeprefix("torch.")
        tb.shape = list(src.shape)
        tb.strides = list(src.stride())
        enc.put_data(tb, "data", _tensor_bytes(src), prefix)

    def get(self, r: Any, wire: str, dec: DecodeContext, path: str) -> Any:
        if not r._has(wire):
            import torch

            return torch.empty(0)
        return self._read(r._get(wire), dec, path + wire + ".")

    def take(self, lr: Any, i: int, dec: DecodeContext, path: str) -> Any:
        return self._read(lr[i], dec, f"{path}{i}.")

    @staticmethod
    def _read(tr: Any, dec: DecodeContext, prefix: str) -> Any:
        data = dec.get_data(tr, "data", prefix)
        tensor = getattr(sys.modules.get("torch"), "Tensor", None)
        if tensor is not None and isinstance(data, tensor):
            return data  # a rank's local tensor, in place of a handle (TENSOR_REFS)
        return _bytes_tensor(data, tr.dtype or "uint8", list(tr.shape), list(tr.strides))


def _tensor_bytes(v: Any) -> Any:
    """A zero-copy byte view of a CPU tensor (copied only when not contiguous or not on CPU)."""
    if isinstance(v, bytes | bytearray | memoryview):
        return v
    import torch

    src = v.detach()
    if src.device.type != "cpu":
        src = src.cpu()
    src = src.contiguous()
    if src.numel() == 0:
        return b""
    return memoryview(src.reshape(-1).view(torch.uint8).numpy())


def _bytes_tensor(buf: Any, dtype: str, shape: list[int] | None, strides: list[int] | None) -> Any:
    import torch

    dt = getattr(torch, dtype)
    if isinstance(buf, bytes):
        buf = bytearray(buf)  # torch.frombuffer wants a writable buffer; in-message data is small
    mv = memoryview(buf).cast("B")
    if mv.nbytes == 0:
        return torch.empty(shape if shape is not None else (0,), dtype=dt)
    flat = torch.frombuffer(mv, dtype=torch.uint8).view(dt)
    if shape is None:
        return flat
    if strides is not None and len(strides) == len(shape):
        return flat.as_strided(shape, strides)
    return flat.reshape(shape)


class _Named(Conv):
    """Base of converters that name a generated class, resolved on first use."""

    def __init__(self, module: str, name: str) -> None:
        self._module = module
        self._name = name
        self._cls: Any = None

    @property
    def cls(self) -> Any:
        if self._cls is None:
            obj: Any = sys.modules[self._module]
            for part in self._name.split("."):
                obj = getattr(obj, part)
            self._cls = obj
        return self._cls


class _Enum(_Named):
    cacheable = False

    def set(self, b: Any, wire: str, v: Any, enc: EncodeContext, path: str) -> None:
        b._set(wire, int(v))

    def get(self, r: Any, wire: str, dec: DecodeContext, path: str) -> Any:
        return self.member(r._get(wire).raw)

    def put(self, lb: Any, i: int, v: Any, enc: EncodeContext, path: str) -> None:
        name = (v if isinstance(v, self.cls) else self.cls(v)).name
        if name.startswith("<"):
            raise ValueError(
                f"{self.cls.__qualname__} value {int(v)} is not in this schema version; "
                "a list element needs a known enumerant"
            )
        # schema names never contain "_": the generator's escapes only append one
        lb[i] = name.rstrip("_")

    def take(self, lr: Any, i: int, dec: DecodeContext, path: str) -> Any:
        return self.member(lr[i].raw)

    def member(self, value: int) -> Any:
        """The member for ``value``; a value this schema version does not know (a newer peer
        added enumerants, which Cap'n Proto allows) is an ``unknown`` pseudo-member that
        compares equal to its number and is sent on unchanged."""
        cls = self.cls
        try:
            return cls(value)
        except ValueError:
            return unknown_enumerant(cls, value)


_UNKNOWN: dict[tuple[type, int], Any] = {}


def unknown_enumerant(cls: Any, value: int) -> Any:
    """A pseudo-member of IntEnum ``cls`` for a number it does not declare (one per value)."""
    key = (cls, value)
    obj = _UNKNOWN.get(key)
    if obj is None:
        obj = int.__new__(cls, value)
        obj._name_ = f"<unknown {value}>"
        obj._value_ = value
        obj = _UNKNOWN.setdefault(key, obj)
    return obj


class _Struct(_Named):
    """A struct field; a received struct view is copied raw (see :func:`raw_source`)."""

    def set(self, b: Any, wire: str, v: Any, enc: EncodeContext, path: str) -> None:
        _check(v, self.cls, wire)
        if not _copy_raw(b, wire, v, enc, path):
            v._write(b.init(wire), enc, path + wire + ".")

    def get(self, r: Any, wire: str, dec: DecodeContext, path: str) -> Any:
        return self.cls._view(r._get(wire), dec, path + wire + ".")

    def put(self, lb: Any, i: int, v: Any, enc: EncodeContext, path: str) -> None:
        _check(v, self.cls, str(i))
        src = raw_source(v)
        if src is not None:
            try:
                # copies what fits the list's element size (this version's struct size): a
                # newer peer's fields past it are lost, as in Cap'n Proto's own element copy
                lb[i] = src
            except Exception:  # KjException "Value type mismatch": another brand
                pass
            else:
                if v._ctx.oob:
                    v._ctx.carry_oob(v._path, enc, lb[i], f"{path}{i}.")
                return
        v._write(lb[i], enc, f"{path}{i}.")

    def take(self, lr: Any, i: int, dec: DecodeContext, path: str) -> Any:
        return self.cls._view(lr[i], dec, f"{path}{i}.")


class _Group(_Struct):
    def set(self, b: Any, wire: str, v: Any, enc: EncodeContext, path: str) -> None:
        _check(v, self.cls, wire)
        # init, not get: a group that is a union member must become the active member
        v._write(b.init(wire), enc, path + wire + ".")


def _copy_raw(b: Any, wire: str, v: Any, enc: EncodeContext, path: str) -> bool:
    """Copy received struct view ``v`` raw into struct field ``wire`` of builder ``b``; False
    where it cannot be (not a view, or a field of another brand: the caller writes it field
    by field)."""
    src = raw_source(v)
    if src is None:
        return False
    try:
        b._set(wire, src)
    except Exception:  # KjException "Value type mismatch": a field of another brand
        return False
    if v._ctx.oob:
        v._ctx.carry_oob(v._path, enc, b._get(wire), path + wire + ".")
    return True


def raw_source(v: Any) -> Any:
    """Where to copy a received struct view ``v`` from (see :meth:`DecodeContext.source`); None
    for a built struct, a group (part of its parent's data, never copied alone) or a view
    whose message cannot be followed there."""
    if v._reader is None or v._ctx is None or v.__capnp__.is_group:
        return None
    src = v._ctx.source(v._path)
    if src is not None and _is_untyped(src):  # a view read through from_any
        src = src.as_struct(v.__capnp__.struct_module().schema)
    return src


def _check(v: Any, cls: type, where: str) -> None:
    if not isinstance(v, cls):
        raise TypeError(f"field {where!r} needs a {cls.__qualname__}, got {type(v).__qualname__}")


class _Ref(_Named):
    """``M.ActorRef(T)``: a mesh proxy, encoded by the runtime as opaque bytes."""

    def set(self, b: Any, wire: str, v: Any, enc: EncodeContext, path: str) -> None:
        from .._mesh.actor_mesh import encode_mesh_ref

        self._check(v)
        b.init(wire).ref = encode_mesh_ref(v)

    def _check(self, v: Any) -> None:
        # a mesh of another actor type would reach the receiver as the declared proxy class and
        # fail there, on the wrong endpoints: refuse it at the call site
        if not isinstance(v, self.cls):
            raise TypeError(f"needs a {self.cls.__qualname__}, got {type(v).__qualname__}")

    def get(self, r: Any, wire: str, dec: DecodeContext, path: str) -> Any:
        if not r._has(wire):
            return None
        return self._decode(r._get(wire))

    def put(self, lb: Any, i: int, v: Any, enc: EncodeContext, path: str) -> None:
        from .._mesh.actor_mesh import encode_mesh_ref

        self._check(v)
        lb[i].ref = encode_mesh_ref(v)

    def take(self, lr: Any, i: int, dec: DecodeContext, path: str) -> Any:
        return self._decode(lr[i])

    def _decode(self, rr: Any) -> Any:
        from .._mesh.actor_mesh import decode_mesh_ref

        return decode_mesh_ref(rr.ref, self.cls)


class _Adapted(Conv):
    """A struct converted by the adapter a higher layer registered for its node id
    (``M.RDMABuffer``: :class:`monarch.rdma.RDMABuffer`); see :mod:`monarch._idl._adapters`."""

    def __init__(self, node_id: int) -> None:
        self.node_id = node_id
        self._adapter: StructAdapter | None = None

    @property
    def adapter(self) -> StructAdapter:
        if self._adapter is None:
            self._adapter = get_adapter(self.node_id)
        return self._adapter

    def set(self, b: Any, wire: str, v: Any, enc: EncodeContext, path: str) -> None:
        self.adapter.write(b.init(wire), v)

    def get(self, r: Any, wire: str, dec: DecodeContext, path: str) -> Any:
        if not r._has(wire):
            return None
        return self.adapter.read(r._get(wire))

    def put(self, lb: Any, i: int, v: Any, enc: EncodeContext, path: str) -> None:
        self.adapter.write(lb[i], v)

    def take(self, lr: Any, i: int, dec: DecodeContext, path: str) -> Any:
        return self.adapter.read(lr[i])


class _Param(Conv):
    """A field typed by a generic parameter: the value's own type decides (struct, Text, Data).

    Where the message is branded (the parameter is bound), pycapnp hands out typed builders and
    readers. Where it is not (a generic struct encoded as a root by itself), the field is an
    untyped pointer: a struct is written as its own type, and read back as an untyped view
    (:class:`monarch._idl.AnyStruct`) that ``Cls.from_any(value)`` reads as ``Cls``.
    """

    def set(self, b: Any, wire: str, v: Any, enc: EncodeContext, path: str) -> None:
        from ._struct import Struct

        if isinstance(v, Struct):
            _set_struct_pointer(b, wire, v, enc, path)
        elif isinstance(v, str) and _is_untyped(b._get(wire)):
            b._get(wire).set_as_text(v)
        else:
            b._set(wire, v)

    def get(self, r: Any, wire: str, dec: DecodeContext, path: str) -> Any:
        if not r._has(wire):
            return None
        v = r._get(wire)
        schema = getattr(v, "schema", None)
        if schema is None:
            if _is_untyped(v):
                from ._struct import AnyStruct

                return AnyStruct._pointer(v, dec, path + wire + ".")
            return v
        from ._struct import struct_class

        return struct_class(schema.node.id)._view(v, dec, path + wire + ".")


def _is_untyped(v: Any) -> bool:
    """A pycapnp AnyPointer builder or reader (no schema of its own)."""
    return hasattr(v, "as_struct") and not hasattr(v, "schema")


def _set_struct_pointer(b: Any, wire: str, v: Any, enc: EncodeContext, path: str) -> None:
    from ._struct import AnyStruct

    target = b._get(wire)
    if isinstance(v, AnyStruct):
        if not _is_untyped(target):
            raise TypeError(f"field {wire!r}: an untyped struct view needs an AnyPointer field")
        target.set(v._ptr)
        return
    if _is_untyped(target):
        # pycapnp cannot copy a struct raw into an untyped pointer: field by field (what this
        # version does not know of a received struct is lost here)
        v._write(target.as_struct(v.__capnp__.struct_module().schema), enc, path + wire + ".")
    elif not _copy_raw(b, wire, v, enc, path):
        v._write(b.init(wire), enc, path + wire + ".")


class _AnyStruct(Conv):
    """``AnyPointer``/``AnyStruct``: any generated struct; received as an untyped view."""

    def set(self, b: Any, wire: str, v: Any, enc: EncodeContext, path: str) -> None:
        from ._struct import Struct

        if not isinstance(v, Struct):
            raise TypeError(
                f"field {wire!r} (AnyPointer) needs a generated struct, got {type(v).__qualname__}"
            )
        _set_struct_pointer(b, wire, v, enc, path)

    def get(self, r: Any, wire: str, dec: DecodeContext, path: str) -> Any:
        if not r._has(wire):
            return None
        from ._struct import AnyStruct

        return AnyStruct._pointer(r._get(wire), dec, path + wire + ".")


class _List(Conv):
    def __init__(self, elem: Conv) -> None:
        self.elem = elem

    def set(self, b: Any, wire: str, v: Any, enc: EncodeContext, path: str) -> None:
        if self.elem.simple:
            b._set(wire, list(v))
            return
        if isinstance(v, StructList) and getattr(v._conv, "cls", 0) is getattr(
            self.elem, "cls", None
        ):
            # a received list sent on: copied raw, each element whole (see DecodeContext.source)
            src = v._dec.source(v._prefix)
            if src is not None:
                try:
                    b._set(wire, src)
                except Exception:  # KjException "Value type mismatch": another brand
                    pass
                else:
                    if v._dec.oob:
                        v._dec.carry_oob(v._prefix, enc, b._get(wire), path + wire + ".")
                    return
        self._fill(b.init(wire, len(v)), v, enc, path + wire + ".")

    def put(self, lb: Any, i: int, v: Any, enc: EncodeContext, path: str) -> None:
        self._fill(lb.init(i, len(v)), v, enc, f"{path}{i}.")

    def _fill(self, lb: Any, v: Any, enc: EncodeContext, prefix: str) -> None:
        put = self.elem.put
        for i, x in enumerate(v):
            put(lb, i, x, enc, prefix)

    def get(self, r: Any, wire: str, dec: DecodeContext, path: str) -> Any:
        return self._read(r._get(wire), dec, path + wire + ".")

    def take(self, lr: Any, i: int, dec: DecodeContext, path: str) -> Any:
        return self._read(lr[i], dec, f"{path}{i}.")

    def _read(self, lr: Any, dec: DecodeContext, prefix: str) -> Any:
        if self.elem.simple:
            return list(lr)
        if isinstance(self.elem, _Struct):
            return StructList(lr, self.elem, dec, prefix)
        take = self.elem.take
        return [take(lr, i, dec, prefix) for i in range(len(lr))]


class StructList(Sequence[Any]):
    """A read-only, lazily converted view of a received list of structs."""

    __slots__ = ("_conv", "_dec", "_items", "_prefix", "_reader")

    def __init__(self, reader: Any, conv: Conv, dec: DecodeContext, prefix: str) -> None:
        self._reader = reader
        self._conv = conv
        self._dec = dec
        self._prefix = prefix
        self._items: list[Any] = [None] * len(reader)

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self._items)))]
        item = self._items[index]
        if item is None:
            i = index + len(self._items) if index < 0 else index
            item = self._items[i] = self._conv.take(self._reader, i, self._dec, self._prefix)
        return item

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequence) or isinstance(other, str | bytes):
            return NotImplemented
        return len(self) == len(other) and all(a == b for a, b in zip(self, other))

    __hash__ = None  # type: ignore[assignment]  # compared by contents, like list

    def __repr__(self) -> str:
        return repr(list(self))


_SIMPLE: dict[str, Conv] = {name: _Prim() for name in _PRIMS}
_SIMPLE["Text"] = _Text()
_SIMPLE.update(
    Void=_Void(),
    Data=_Data(),
    TensorData=_TensorData(),
    Tensor=_Tensor(),
    Param=_Param(),
    AnyStruct=_AnyStruct(),
)
_NAMED: dict[str, type[_Named]] = {"Enum": _Enum, "Struct": _Struct, "Group": _Group, "Ref": _Ref}


def compile_type(expr: str, module: str) -> Conv:
    """The converter of a type expression, resolving class names in ``module``.

    Raises:
        ValueError: the expression is malformed (a generator bug).
    """
    simple = _SIMPLE.get(expr)
    if simple is not None:
        return simple
    m = _CALL.match(expr)
    if m is None:
        raise ValueError(f"bad field type expression {expr!r}")
    head, arg = m.groups()
    if head == "List":
        return _List(compile_type(arg, module))
    if head == "Adapted":
        return _Adapted(int(arg, 16))
    named = _NAMED.get(head)
    if named is None:
        raise ValueError(f"bad field type expression {expr!r}")
    return named(module, arg)
