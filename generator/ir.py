"""The intermediate representation: everything a template prints, already decided.

Frozen pydantic models. Names are already Pythonic (snake_case members, renamed keywords),
annotations are final Python source text, and every list is in a deterministic order (schema
order: ordinals, code order, or nesting order), so templates only print.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict
from pydantic import Field as _PydanticField

__all__ = [
    "HELPERS",
    "Const",
    "Enum",
    "Enumerant",
    "Field",
    "Interface",
    "Method",
    "Module",
    "Param",
    "Struct",
]


HELPERS = (
    "AsyncIterator", "Awaitable", "Iterator", "Sequence",  # collections.abc
    "ClassVar", "Generic", "Literal", "TYPE_CHECKING", "TypeVar",  # typing
    "abstractmethod", "enum", "torch",
)  # fmt: skip
"""Names a generated module imports for its own use. A schema may declare the same name (a
struct ``Sequence``, a field ``torch``, a constant ``typeChecking``): the module then imports it
under a private alias (``_Sequence``), as schema names never contain ``_``."""


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Field(_Model):
    """One struct field.

    Attributes:
        name: Python attribute name.
        wire: the schema's field name.
        annotation: the attribute's Python type.
        init_annotation: the ``__init__`` parameter's type.
        init_default: the ``__init__`` default as source text; None for a required parameter.
        expr: the runtime type expression (see ``monarch._idl._types``).
        in_union: member of the struct's unnamed union.
        doc: doc comment.
    """

    name: str
    wire: str
    annotation: str
    init_annotation: str
    init_default: str | None
    expr: str
    in_union: bool
    doc: str


class Enumerant(_Model):
    name: str
    value: int
    doc: str


class Enum(_Model):
    """An ``enum.IntEnum``; ``name`` is the class name inside its scope."""

    name: str
    qualname: str
    enumerants: list[Enumerant]
    doc: str
    alias: str = ""
    """A private module-level name for the class (``_top_Mode = Mode``), set for a top-level class
    that a nested class of the same name shadows inside its enclosing class bodies; references
    use it. "" when none is needed."""


class Struct(_Model):
    """A struct, group, or a method's parameter/result struct.

    Attributes:
        name: class name inside its scope.
        qualname: dotted name from the module (``Outer.Inner``).
        node_id: Cap'n Proto node id, as hex source text.
        type_params: generic parameters (TypeVar names).
        fields: in ordinal order, union members in discriminant order.
        union_members: Python names of the unnamed union's members ("" when none).
        nested_enums / nested_structs: nested types (groups included), in schema order.
        consts: constants declared in the struct (class attributes, assigned after the classes).
        doc: doc comment, or a generated description.
        alias: see :attr:`Enum.alias`.
    """

    name: str
    qualname: str
    node_id: str
    type_params: list[str]
    fields: list[Field]
    union_literal: str
    nested_enums: list[Enum]
    nested_structs: list[Struct]
    consts: list[Const]
    doc: str
    alias: str = ""


class Const(_Model):
    """A schema constant.

    Attributes:
        name: Python name (UPPER_SNAKE).
        owner: qualified class of the struct a nested constant belongs to; "" at file scope.
        annotation: Python type.
        value: Python expression of the value.
    """

    name: str
    owner: str
    annotation: str
    value: str
    doc: str


class Param(_Model):
    """A method parameter: ``annotation`` as implementations receive it, ``call_annotation`` as
    callers pass it (``stubs.Bytes`` for Data)."""

    name: str
    annotation: str
    call_annotation: str
    default: str | None
    keyword_only: bool
    """First of the keyword-only parameters: a required one after one with a default (Python
    allows that only after ``*``); the template prints ``*`` before it. Same rule as
    ``monarch._idl._codec``."""


class Method(_Model):
    """One endpoint.

    Attributes:
        name: Python method name.
        wire: the schema's method name.
        interface_id: the interface's node id, as hex source text.
        ordinal: method index in its interface.
        spec: name of the module-level ``EndpointSpec`` constant.
        params: Python parameters (after ``self`` and the port).
        result: Python type of one result (the item type for streams).
        params_class / results_class: generated struct classes (qualified).
        result_kind: ``none``, ``single`` or ``struct``.
        impl_return: return annotation of the abstract implementation method.
        port: the ``Port[...]`` annotation of an explicit response port, or "".
        remote: the decorator that makes the mesh proxy's endpoint attribute:
            ``stubs.remote``, or ``stubs.remote_rref`` for ``$M.rref`` (typed ``rref()``).
    """

    name: str
    wire: str
    interface_id: str
    ordinal: int
    spec: str
    params: list[Param]
    result: str
    params_class: str
    results_class: str
    result_kind: str
    impl_return: str
    port: str
    stream: bool
    rref: bool
    remote: str
    timeout_s: str
    concurrent: bool
    doc: str


class Interface(_Model):
    """An ``$M.actor`` interface: abstract base ``name`` and mesh proxy ``mesh`` (``alias`` and
    ``mesh_alias``: see :attr:`Enum.alias`). ``mesh_classvar`` is the annotation of the class's
    ``__monarch_mesh__`` (``ClassVar[type[XMesh]]``), which types ``ProcMesh.spawn`` of a
    subclass, derived interfaces included, as ``XMesh``."""

    name: str
    mesh: str
    alias: str = ""
    mesh_alias: str = ""
    actor_bases: list[str]
    mesh_bases: list[str]
    mesh_classvar: str
    methods: list[Method]
    doc: str
    mesh_doc: str


class Module(_Model):
    """One generated module.

    Attributes:
        source: the schema's file name as given on the command line (header).
        schema_file: the schema copy's name next to the module.
        imports: extra ``import`` lines (other generated modules).
        typing_names: names imported from ``typing`` and ``collections.abc``.
        abc_names: names imported from ``abc``.
        names: how the module spells each of :data:`HELPERS` (itself, or its private alias).
        typevars: TypeVar names to declare.
        uses_torch: a field or parameter is a tensor.
        enums / structs / consts / interfaces: top-level declarations in output order.
        internal_structs: parameter/result classes of methods.
    """

    source: str
    schema_file: str
    doc: str
    imports: list[str]
    typing_names: list[str]
    abc_names: list[str]
    names: dict[str, str] = _PydanticField(default_factory=lambda: {h: h for h in HELPERS})
    typevars: list[str]
    uses_torch: bool
    uses_enum: bool
    enums: list[Enum]
    structs: list[Struct]
    internal_structs: list[Struct]
    consts: list[Const]
    interfaces: list[Interface]
