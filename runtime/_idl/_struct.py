"""``Struct``: the base class of generated Cap'n Proto struct classes.

A struct instance is either *built* (made with keyword arguments, to be sent) or a *view* (over a
received message: fields are read lazily from the pycapnp reader, Data fields and tensors are
views of the received buffers, never copies). Both answer the same typed attributes, so a
received struct can be sent on unchanged.

Generated classes hold no logic: each declares ``__capnp__ = StructInfo(...)`` (its schema node and
its fields with their type expressions, see :mod:`monarch._idl._types`) and a typed ``__init__``
that forwards its keyword arguments here.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Generic, TypeVar

from ._schema import LoadedSchema
from ._types import (
    Conv,
    DecodeContext,
    EncodeContext,
    FieldValueError,
    compile_type,
    field_value_error,
    raw_source,
)

__all__ = ["AnyStruct", "Struct", "StructInfo", "Which", "struct_class"]

L = TypeVar("L", bound=str)
S = TypeVar("S", bound="Struct")

_BY_NODE: dict[int, type[Struct]] = {}
FieldDecl = tuple[str, str, str, bool]  # (python name, wire name, type expression, in union)


def struct_class(node_id: int) -> type[Struct]:
    """The generated class of a struct node (used for generic parameters on receive).

    Raises:
        KeyError: no generated module defining this struct was imported.
    """
    return _BY_NODE[node_id]


class _Field:
    """The data descriptor of one field on a generated class."""

    __slots__ = ("conv", "expr", "info", "py", "union", "wire")

    def __init__(self, info: StructInfo, py: str, wire: str, expr: str, union: bool) -> None:
        self.info = info
        self.py = py
        self.wire = wire
        self.expr = expr
        self.union = union
        self.conv: Conv | None = None

    def converter(self) -> Conv:
        conv = self.conv
        if conv is None:
            conv = self.conv = compile_type(self.expr, self.info.module)
        return conv

    def __get__(self, inst: Struct | None, owner: type) -> Any:
        if inst is None:
            return self
        r = inst._reader
        if r is None:
            v = inst._values.get(self.py)
            if v is None:
                if self.union and inst.which_name() != self.py:
                    raise AttributeError(
                        f"{type(inst).__qualname__}.{self.py} is not the active union member"
                    )
                return getattr(type(inst)._default_view(), self.py)
            return v
        if self.union and _which(r) != self.wire:
            raise AttributeError(
                f"{type(inst).__qualname__}.{self.py} is not the active union member"
            )
        cache = inst._cache
        if self.py in cache:
            return cache[self.py]
        conv = self.converter()
        v = conv.get(r, self.wire, inst._ctx, inst._path)  # type: ignore[arg-type]  # set with _reader
        if conv.cacheable:
            cache[self.py] = v
        return v

    def __set__(self, inst: Struct, value: Any) -> None:
        if inst._reader is not None:
            raise AttributeError(f"{type(inst).__qualname__} received from a message is read-only")
        inst._values[self.py] = value


class StructInfo:
    """What a generated struct class declares about itself.

    Args:
        schema: the loaded schema file (see :func:`monarch._idl.load_schema`).
        node_id: the struct's Cap'n Proto node id.
        module: the generated module's ``__name__``; class names in type expressions resolve there.
        fields: ``(python name, wire name, type expression, in unnamed union)`` per field, union
            members in discriminant order.
    """

    __slots__ = (
        "_default",
        "_is_group",
        "fields",
        "module",
        "node_id",
        "schema",
        "union_by_wire",
        "union_first",
    )

    def __init__(
        self, schema: LoadedSchema, node_id: int, module: str, fields: Sequence[FieldDecl]
    ) -> None:
        self.schema = schema
        self.node_id = node_id
        self.module = module
        self.fields = tuple(fields)
        union = [(py, wire) for py, wire, _, in_union in self.fields if in_union]
        self.union_by_wire = {wire: py for py, wire in union}
        self.union_first = union[0][0] if union else ""
        self._default: Any = None
        self._is_group: bool | None = None

    def struct_module(self) -> Any:
        return self.schema.struct_module(self.node_id)

    @property
    def is_group(self) -> bool:
        """Groups live inside their struct: they cannot be a message's root."""
        g = self._is_group
        if g is None:  # asked on every encode: read the schema node once (about 3 us)
            g = self._is_group = bool(self.struct_module().schema.node.struct.isGroup)
        return g


class Which(Generic[L]):
    """``which()`` of a struct with an unnamed union, typed as a ``Literal`` of member names.

    Generated as ``which: Final = stubs.Which[Literal["a", "b"]]()``.
    """

    def __get__(self, inst: Struct | None, owner: type) -> Callable[[], L]:
        if inst is None:
            raise AttributeError("which() is called on an instance")
        return inst.which_name  # type: ignore[return-value]  # names come from the same schema


class Struct:
    """Base of generated struct classes; see the module docstring."""

    __slots__ = ("_cache", "_ctx", "_path", "_reader", "_values")
    __capnp__: ClassVar[StructInfo]
    _descriptors: ClassVar[tuple[_Field, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        info = cls.__dict__.get("__capnp__")
        if info is None:
            return
        descriptors = []
        for py, wire, expr, union in info.fields:
            d = _Field(info, py, wire, expr, union)
            setattr(cls, py, d)
            descriptors.append(d)
        cls._descriptors = tuple(descriptors)
        _BY_NODE[info.node_id] = cls

    def __init__(self, **values: Any) -> None:
        self._reader: Any = None
        self._ctx: DecodeContext | None = None
        self._path = ""
        self._cache: dict[str, Any] = {}
        given = [
            py
            for py, wire, _, union in self.__capnp__.fields
            if union and values.get(py) is not None
        ]
        if len(given) > 1:
            raise ValueError(
                f"{type(self).__qualname__}: at most one union member may be set, got {given}"
            )
        self._values = values

    # -- receiving -------------------------------------------------------------------------
    @classmethod
    def _view(cls: type[S], reader: Any, ctx: DecodeContext, path: str) -> S:
        obj = cls.__new__(cls)
        obj._reader = reader
        obj._ctx = ctx
        obj._path = path
        obj._cache = {}
        obj._values = {}
        return obj

    @classmethod
    def _default_view(cls: type[S]) -> S:
        info = cls.__capnp__
        if info._default is None:
            smod = info.struct_module()
            if info.is_group:
                info._default = cls._group_default(smod.schema)
            else:
                info._default = cls._decode(smod.new_message().to_bytes(), [])
        return info._default  # type: ignore[no-any-return]

    @classmethod
    def _group_default(cls: type[S], schema: Any) -> S:
        """A group cannot be a message root: view it inside a fresh message of the struct that
        (through its enclosing groups) holds it, made the active member where it is in a union."""
        from ._schema import struct_module

        chain: list[str] = []
        node = schema.node
        while node.struct.isGroup:
            parent = struct_module(node.scopeId).schema
            chain.insert(
                0,
                next(
                    f.proto.name
                    for f in parent.fields_list
                    if f.proto.which() == "group" and f.proto.group.typeId == node.id
                ),
            )
            node = parent.node
        msg = struct_module(node.id).new_message()
        b = msg
        for wire in chain:
            b = b.init(wire)
        return cls._view(b.as_reader(), DecodeContext(msg, None, [], None), "")

    @classmethod
    def _decode(cls: type[S], payload: Any, buffers: Sequence[Any], smod: Any = None) -> S:
        oob: dict[str, int] | None = None
        if buffers:
            directory = bytes(buffers[-1]).decode()
            oob = {p: i for i, p in enumerate(directory.split("\n"))}
            buffers = buffers[:-1]
        nbytes = len(payload) if isinstance(payload, bytes) else memoryview(payload).nbytes
        # cumulative per reader: room for views to re-read the message several times
        limit = 8 * (nbytes // 8) + 8192
        if smod is None:
            smod = cls.__capnp__.struct_module()
        if _FROM_BYTES is not None:
            # pycapnp's context manager minus its wrapper (0.6 us a message): the generator
            # holds the message open until it is garbage, with the views that read it
            cm: Any = _FROM_BYTES(smod, payload, limit)
            reader = next(cm)
        else:
            cm = smod.from_bytes(payload, traversal_limit_in_words=limit)
            reader = cm.__enter__()
        return cls._view(reader, DecodeContext(cm, payload, buffers, oob, reader), "")

    @classmethod
    def from_bytes(
        cls: type[S], data: bytes | bytearray | memoryview, buffers: Sequence[Any] = ()
    ) -> S:
        """A view over a flat (unpacked, single segment or not) Cap'n Proto message.

        Args:
            data: the message, as written by :meth:`to_bytes`; kept referenced by the view.
            buffers: out-of-band buffers and their directory, when the message has any.
        """
        return cls._decode(data, list(buffers))

    @classmethod
    def from_any(cls: type[S], value: Struct) -> S:
        """Read the value of an ``AnyPointer``/``AnyStruct`` field as this struct.

        Args:
            value: what such a field holds: an :class:`AnyStruct` view (received), or an
                instance of this class (built locally). The caller knows the type from the
                protocol (Cap'n Proto does not carry it on the wire).

        Returns:
            A view of the pointed-to struct as ``cls`` (sharing the received message), or
            ``value`` itself when it is already a ``cls``.

        Raises:
            TypeError: ``value`` is a struct of another class.
        """
        if isinstance(value, cls):
            return value
        if isinstance(value, AnyStruct):
            # one view per class: each as_struct counts against the message's traversal limit
            view = value._as.get(cls)
            if view is None:
                reader = value._ptr.as_struct(cls.__capnp__.struct_module().schema)
                view = value._as[cls] = cls._view(reader, value._ctx, value._path)  # type: ignore[arg-type]  # set with _ptr
            return view  # type: ignore[return-value]  # made as a cls just above
        raise TypeError(
            f"{cls.__qualname__}.from_any needs an AnyStruct view or a {cls.__qualname__}, "
            f"got {type(value).__qualname__}"
        )

    # -- sending ---------------------------------------------------------------------------
    def _present(self) -> list[tuple[_Field, Any]]:
        """The fields to write, with their values: set fields (built) or all fields (view)."""
        if self._reader is None:
            values = self._values
            return [(d, values[d.py]) for d in self._descriptors if values.get(d.py) is not None]
        active = self.which_name() if self.__capnp__.union_first else ""
        # a pointer field the message leaves null is left null: reading it would give its
        # default, and a struct that holds its own type (a tree node) would be copied forever
        present = [
            (d, getattr(self, d.py))
            for d in self._descriptors
            if (d.py == active if d.union else self._is_set(d))
        ]
        return [(d, v) for d, v in present if v is not None or d.union]

    def _write(self, b: Any, enc: EncodeContext, path: str) -> None:
        for d, v in self._present():
            conv = d.conv or d.converter()
            try:
                conv.set(b, d.wire, v, enc, path)
            except FieldValueError as exc:  # from a nested struct: name the path to it
                exc.field = f"{d.py}.{exc.field}"
                raise
            except Exception as exc:
                # pycapnp's KjException ("Value type mismatch", with a C++ stack) names no field
                raise field_value_error(d.py, d.expr, v, exc) from None

    def _encode(self, oob: bool = True, smod: Any = None) -> tuple[bytes, list[Any]]:
        """``(message bytes, out-of-band buffers + directory)``; see :mod:`monarch._idl._types`.

        ``smod`` is the pycapnp struct module to build with (a method's branded params or
        results); None uses the class's own node.

        Raises:
            TypeError: this is a group (a group is only ever part of its struct).
            FieldValueError: a field holds a value its schema type cannot (a ``TypeError`` and
                a ``ValueError``), naming the field.
        """
        info = self.__capnp__
        if info.is_group:
            raise TypeError(
                f"{type(self).__qualname__} is a group: encode the struct that holds it"
            )
        enc = EncodeContext(oob)
        src = raw_source(self)
        if src is not None:
            # a received struct sent on: copied raw, as Cap'n Proto copies a struct, so what a
            # newer peer wrote (fields, union members this version lacks) reaches the next one
            msg = src.as_reader().as_builder()
            if self._ctx is not None and self._ctx.oob:
                self._ctx.carry_oob(self._path, enc, msg, "")
        else:
            msg = (smod or info.struct_module()).new_message()
            try:
                self._write(msg, enc, "")
            except FieldValueError as exc:
                exc.where = exc.where or type(self).__qualname__
                raise exc.with_traceback(None) from None
        buffers = enc.buffers
        if buffers:
            buffers.append("\n".join(enc.paths).encode())
        return msg.to_bytes(), buffers

    def to_bytes(self) -> bytes:
        """This struct as one flat Cap'n Proto message, every Data field inside it.

        A received struct is copied raw: fields and union members that this version of the
        schema does not know are kept.

        Raises:
            FieldValueError: a built struct's field holds a value its type cannot.
            ValueError: a received struct holds a field that this version of the schema does
                not know and whose bytes came out of band (at least 4 KiB): it can be sent on
                as received, not flattened.
        """
        return self._encode(oob=False)[0]

    # -- unions ----------------------------------------------------------------------------
    def which_name(self) -> str:
        """The Python name of the active member of the unnamed union; ``"<unknown>"`` for a
        received member that a newer version of the schema added (sent on unchanged with the
        struct that holds it, see :meth:`monarch._idl._types.DecodeContext.source`).

        Raises:
            TypeError: the struct has no unnamed union.
        """
        info = self.__capnp__
        if not info.union_first:
            raise TypeError(f"{type(self).__qualname__} has no union")
        if self._reader is not None:
            # a member a newer schema version added: Cap'n Proto allows it, this version cannot
            # name it
            return info.union_by_wire.get(_which(self._reader), UNKNOWN_MEMBER)
        for py in info.union_by_wire.values():
            if self._values.get(py) is not None:
                return py
        return info.union_first

    # -- Python protocol -------------------------------------------------------------------
    def _items(self) -> list[tuple[_Field, Any]]:
        """``(field, value)`` of the fields to compare or show (of a union, the active member).

        A field left unset (a pointer that is null in a received message, a field not given to a
        built struct) is :data:`_UNSET`: its default is read only where needed, since a struct
        that holds its own type (a tree node) has an endless chain of defaults.
        """
        active = self.which_name() if self.__capnp__.union_first else ""
        r = self._reader
        out: list[tuple[_Field, Any]] = []
        for d in self._descriptors:
            if d.union and d.py != active:
                continue
            if r is None:
                v = self._values.get(d.py)
                out.append((d, _UNSET if v is None else v))
            else:
                out.append((d, getattr(self, d.py) if d.union or self._is_set(d) else _UNSET))
        return out

    def _is_set(self, d: _Field) -> bool:
        """Whether a received struct holds field ``d`` (not null, or its bytes out of band)."""
        if self._reader._has(d.wire):
            return True
        oob = self._ctx.oob if self._ctx is not None else None
        return oob is not None and self._path + d.wire in oob

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, Struct)
        for (da, a), (db, b) in zip(self._items(), other._items(), strict=True):
            if da is not db:  # different union members
                return False
            if a is _UNSET and b is _UNSET:
                continue
            a = getattr(self, da.py) if a is _UNSET else a
            b = getattr(other, db.py) if b is _UNSET else b
            if not _equal(a, b):
                return False
        return True

    __hash__ = None  # type: ignore[assignment]  # mutable while built

    def __repr__(self) -> str:
        parts = []
        for d, v in self._items():
            if v is _UNSET:
                # an unset struct or group shows as None (what __init__ takes for its default)
                v = None if d.expr.startswith(("Struct(", "Group(")) else getattr(self, d.py)
            parts.append(f"{d.py}={_short(v)}")
        return f"{type(self).__qualname__}({', '.join(parts)})"


class AnyStruct(Struct):
    """A received ``AnyPointer``/``AnyStruct`` value: a struct of a type the message does not
    name. Read it with ``SomeStruct.from_any(value)``; send it on unchanged as is."""

    __slots__ = ("_as", "_ptr")
    _ptr: Any  # the pycapnp AnyPointer reader
    _as: dict[type, Struct]  # from_any's views of it, by class

    @classmethod
    def _pointer(cls, ptr: Any, ctx: DecodeContext, path: str) -> AnyStruct:
        obj = cls.__new__(cls)
        obj._ptr = ptr
        obj._as = {}
        obj._reader = None
        obj._ctx = ctx
        obj._path = path
        obj._cache = {}
        obj._values = {}
        return obj

    def __eq__(self, other: object) -> bool:
        return self is other

    def __repr__(self) -> str:
        return "AnyStruct(<untyped struct: read it with SomeStruct.from_any(value)>)"


def _from_bytes_generator() -> Any:
    from capnp.lib.capnp import _StructModule

    fn = getattr(_StructModule.from_bytes, "__wrapped__", None)
    return fn if inspect.isgeneratorfunction(fn) else None


_FROM_BYTES: Any = _from_bytes_generator()
"""``_StructModule.from_bytes`` without its ``contextmanager`` wrapper (None if pycapnp changes)."""

_UNSET: Any = object()
"""A field left unset (see :meth:`Struct._items`)."""

UNKNOWN_MEMBER = "<unknown>"
"""``which()`` of a received struct whose active union member this schema version lacks."""


def _which(reader: Any) -> str:
    """The wire name of the active union member; "" for a discriminant this schema lacks."""
    try:
        return str(reader._which_str())
    except Exception:  # pycapnp raises KjException for an unknown discriminant
        return ""


def _equal(a: Any, b: Any) -> bool:
    if type(a).__module__ == "torch" or type(b).__module__ == "torch":
        import torch

        return bool(
            isinstance(a, torch.Tensor)
            and isinstance(b, torch.Tensor)
            and a.dtype == b.dtype
            and a.shape == b.shape
            and torch.equal(a, b)
        )
    if isinstance(a, memoryview | bytearray) or isinstance(b, memoryview | bytearray):
        return bytes(a) == bytes(b)
    if isinstance(a, Sequence) and isinstance(b, Sequence) and not isinstance(a, str | bytes):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return bool(a == b)


def _short(v: Any) -> str:
    if isinstance(v, bytes | bytearray | memoryview):
        n = memoryview(v).nbytes
        return repr(bytes(v)) if n <= 32 else f"<{n} bytes>"
    if type(v).__module__ == "torch":
        return f"tensor(shape={list(v.shape)}, dtype={v.dtype})"
    return repr(v)
