"""The wire layout of ``idl/monarch/envelope.capnp``, derived from the schema text at import.

The envelope codec writes and reads Cap'n Proto bytes with ``struct``; every offset it uses (data
section byte offsets, bool bits, pointer indices, struct sizes) comes from here. This module
parses the small subset of the schema language that ``envelope.capnp`` uses (enums and structs
of scalar, ``Text``, ``Data``, ``List(...)`` and struct fields, ``#`` comments; no unions,
groups, defaults or nested declarations, which it rejects) and lays the fields out with Cap'n
Proto's algorithm: pointers in ordinal order; each data field in the first hole of its size
left by earlier fields, else at the start of a new word, whose remainder becomes holes
(``capnp/compiler/node-translator.c++``, ``StructLayout``/``HoleSet``). Parsing and layout take
well under a millisecond, so importing the codec does not import pycapnp (~80 ms); a test
compares every derived number with pycapnp's compiled schema.

Encoding reference: https://capnproto.org/encoding.html#structs
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from .._core.errors import SchemaError

__all__ = ["FieldSlot", "StructLayout", "load_envelope_layout", "parse_layout"]

# log2 of the size in bits of each scalar type; enums are UInt16
_LG_BITS = {
    "Bool": 0,
    "Int8": 3,
    "UInt8": 3,
    "Int16": 4,
    "UInt16": 4,
    "Int32": 5,
    "UInt32": 5,
    "Float32": 5,
    "Int64": 6,
    "UInt64": 6,
    "Float64": 6,
}
_POINTER_TYPES = ("Text", "Data", "AnyPointer")


@dataclass(frozen=True)
class FieldSlot:
    """Where one field lives in its struct.

    Attributes:
        name: the schema's field name.
        type: the schema's type spelling (``UInt32``, ``Text``, ``List(Hop)``, ``Kind``...).
        pointer: True for pointer fields (text, data, lists, structs).
        offset: for a pointer, its index in the pointer section; for data, the offset in units
            of the field's own size (Cap'n Proto's convention).
        bits: the size of a data field in bits (1 for Bool); 64 for pointers.
    """

    name: str
    type: str
    pointer: bool
    offset: int
    bits: int

    @property
    def byte_offset(self) -> int:
        """Byte offset of a data field in the data section (bools: the byte holding the bit)."""
        return self.offset * self.bits // 8

    @property
    def bit(self) -> int:
        """Bit index of a Bool inside :attr:`byte_offset`."""
        return self.offset % 8 if self.bits == 1 else 0


@dataclass(frozen=True)
class StructLayout:
    """The layout of one struct: sizes and every field's slot."""

    name: str
    data_words: int
    pointer_count: int
    fields: dict[str, FieldSlot] = field(default_factory=dict)

    def pointer_names(self) -> tuple[str, ...]:
        """Pointer field names by pointer index."""
        ptrs = sorted((f.offset, f.name) for f in self.fields.values() if f.pointer)
        return tuple(name for _, name in ptrs)

    def ptr(self, name: str) -> int:
        """Pointer index of field ``name``.

        Raises:
            KeyError: no such pointer field.
        """
        f = self.fields[name]
        if not f.pointer:
            raise KeyError(f"{self.name}.{name} is not a pointer field")
        return f.offset

    def data(self, name: str) -> FieldSlot:
        """The slot of data field ``name``.

        Raises:
            KeyError: no such data field.
        """
        f = self.fields[name]
        if f.pointer:
            raise KeyError(f"{self.name}.{name} is not a data field")
        return f

    def data_format(self, names: tuple[str, ...], start: int = 0) -> str:
        """A ``struct`` format (little-endian) reading ``names``, in that order, from byte
        ``start`` of the data section: padding fills the gaps; the fields must be non-Bool and
        in offset order.

        Raises:
            ValueError: the fields overlap, are Bools, or are not in offset order.
        """
        codes = {8: "B", 16: "H", 32: "I", 64: "Q"}
        fmt = "<"
        pos = start
        for name in names:
            f = self.data(name)
            if f.bits == 1:
                raise ValueError(f"{self.name}.{name} is a Bool: read its byte and bit instead")
            if f.byte_offset < pos:
                raise ValueError(f"{self.name}: {name} is not after the previous field")
            if f.byte_offset > pos:
                fmt += f"{f.byte_offset - pos}x"
            fmt += codes[f.bits]
            pos = f.byte_offset + f.bits // 8
        return fmt


class _Holes:
    """Cap'n Proto's HoleSet: at most one free slot of each size below a word."""

    def __init__(self) -> None:
        self.holes = [0] * 6  # by lg of bits; 0 = none (offset 0 is never a hole)

    def try_allocate(self, lg: int) -> int | None:
        if lg >= 6:
            return None
        if self.holes[lg]:
            got = self.holes[lg]
            self.holes[lg] = 0
            return got
        bigger = self.try_allocate(lg + 1)
        if bigger is None:
            return None
        self.holes[lg] = bigger * 2 + 1
        return bigger * 2

    def add_at_end(self, lg: int, offset: int) -> None:
        while lg < 6:
            self.holes[lg] = offset
            lg += 1
            offset = (offset + 1) // 2


_COMMENT = re.compile(r"#[^\n]*")
_DECL = re.compile(r"\b(struct|enum)\s+(\w+)\s*\{([^{}]*)\}")
_FIELD = re.compile(r"^\s*(\w+)\s*@(\d+)\s*:\s*([\w()]+)\s*$")
_KEYWORDS = re.compile(r"\b(struct|enum|union|group|interface)\b")
_ENUMERANT = re.compile(r"^\s*(\w+)\s*@(\d+)\s*$")


def parse_layout(text: str, path: str = "envelope.capnp") -> tuple[dict[str, StructLayout], dict[str, tuple[str, ...]]]:
    """Lay out every struct of a schema in the supported subset.

    Returns:
        ``(structs by name, enumerant names by enum name in ordinal order)``.

    Raises:
        SchemaError: the schema uses something outside the subset, or ordinals have gaps.
    """
    body = _COMMENT.sub("", text)
    decls: dict[str, tuple[dict[int, tuple[str, str]], int]] = {}
    enums: dict[str, tuple[str, ...]] = {}
    matches = list(_DECL.finditer(body))
    starts = {m.start() for m in matches}
    for kw in _KEYWORDS.finditer(body):
        if kw.start() not in starts:  # nested braces, unions, groups, interfaces...
            line = body.count("\n", 0, kw.start()) + 1
            raise SchemaError(path, line, 1, f"unsupported declaration {kw.group(0)!r} (nested, union or group)")
    for m in matches:
        line = body.count("\n", 0, m.start()) + 1
        kind, name, inner = m.group(1), m.group(2), m.group(3)
        items = [s for s in (x.strip() for x in inner.split(";")) if s]
        if kind == "enum":
            values: dict[int, str] = {}
            for item in items:
                em = _ENUMERANT.match(item)
                if em is None:
                    raise SchemaError(path, line, 1, f"unsupported enumerant {item!r} in enum {name}")
                values[int(em.group(2))] = em.group(1)
            if sorted(values) != list(range(len(values))):
                raise SchemaError(path, line, 1, f"enum {name}: ordinals must be 0..n-1")
            enums[name] = tuple(values[i] for i in range(len(values)))
            continue
        decl: dict[int, tuple[str, str]] = {}
        for item in items:
            fm = _FIELD.match(item)
            if fm is None:
                raise SchemaError(path, line, 1, f"unsupported member {item!r} in struct {name}")
            decl[int(fm.group(2))] = (fm.group(1), fm.group(3))
        if sorted(decl) != list(range(len(decl))):
            raise SchemaError(path, line, 1, f"struct {name}: ordinals must be 0..n-1")
        decls[name] = (decl, line)  # laid out below, once every enum and struct name is known
    out: dict[str, StructLayout] = {}
    for name, (decl, line) in decls.items():
        holes = _Holes()
        data_words = 0
        pointers = 0
        fields: dict[str, FieldSlot] = {}
        for ordinal in range(len(decl)):
            fname, ftype = decl[ordinal]
            if ftype in _POINTER_TYPES or ftype.startswith("List(") or ftype in decls:
                fields[fname] = FieldSlot(fname, ftype, True, pointers, 64)
                pointers += 1
                continue
            lg = 4 if ftype in enums else _LG_BITS.get(ftype)
            if lg is None:
                raise SchemaError(path, line, 1, f"struct {name}: unsupported type {ftype!r} of {fname}")
            got = holes.try_allocate(lg)
            if got is None:
                got = data_words << (6 - lg)
                data_words += 1
                holes.add_at_end(lg, got + 1)
            fields[fname] = FieldSlot(fname, ftype, False, got, 1 << lg)
        out[name] = StructLayout(name, data_words, pointers, fields)
    return out, enums


_CACHE: tuple[dict[str, StructLayout], dict[str, tuple[str, ...]]] | None = None


def load_envelope_layout() -> tuple[dict[str, StructLayout], dict[str, tuple[str, ...]]]:
    """The layout of the packaged ``monarch/envelope.capnp`` (parsed once per process)."""
    global _CACHE
    if _CACHE is None:
        import monarch.idl  # the .capnp files are its package data; no importlib.resources (~30 ms)

        path = os.path.join(os.path.dirname(monarch.idl.__file__ or ""), "monarch", "envelope.capnp")
        with open(path, encoding="utf-8") as f:
            _CACHE = parse_layout(f.read(), path)
    return _CACHE
