"""From loaded schema nodes to the IR: types mapped, names made Pythonic, rules checked.

Every schema rule the generator enforces is checked here and reported as a ``SchemaError`` at the
offending declaration: raw interface-typed fields, ``$stream`` with ``$rref``, ``$tensor`` on a
non-Data field, unsupported types, name clashes after renaming.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any

from monarch._core.errors import GenerationError, SchemaError

from . import ir
from .load import Loaded
from .naming import RESERVED_MESH, RESERVED_STRUCT, constant_name, escape, member_name, pascal
from .source import SourceInfo

__all__ = ["build_module"]

ACTOR_FILE_ID = 0xCB7342C23106C306
ANN_ACTOR = 0xD566B8C0FF4AE03B
ANN_STREAM = 0xF9E7F927197F6269
ANN_RREF = 0x9BD9A32E080787B9
ANN_ERP = 0xFB5083D12E7CA306
ANN_TENSOR = 0xF33542792C80FC6A
NO_DISCRIMINANT = 0xFFFF
RDMA_ALIAS = "_rdma"  # how generated modules name monarch.rdma
MAX_LIST_DEPTH = 32  # generated annotations nest one level per list; Python parses ~200
ANY_POINTER_DOC = (
    "AnyPointer: any generated struct. A received value is a stubs.Struct view of unknown\n"
    "type: read it with SomeStruct.from_any(value)."
)
_INTS = {"int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"}


@dataclass(frozen=True)
class _Type:
    attr: str  # attribute / result annotation
    init: str  # __init__ parameter annotation
    default: str | None  # __init__ default
    expr: str  # runtime type expression
    enum_id: int = 0  # the enum's node id, for enum types


class _Builder:
    def __init__(self, loaded: Loaded, path: str, module_names: dict[int, str]) -> None:
        self.loaded = loaded
        self.path = path
        self.nodes = loaded.nodes
        self.file_id = loaded.file_id(path)
        self.source: SourceInfo = loaded.sources[path]
        self.module_names = module_names
        self.imports: dict[str, str] = {}  # alias -> import line
        self.typing: set[str] = set()
        self.abc: set[str] = set()
        self.typevars: set[str] = set()
        self.uses_torch = False
        self.uses_enum = False
        self.internal: list[ir.Struct] = []
        self.actor_names: dict[int, str] = {}
        # generic parameter (scope id, index) -> its bound type, while mapping a branded use
        self.subst: dict[tuple[int, int], _Type] = {}
        self.late_consts: list[ir.Const] = []
        declared, top, nested = self.declared_names()
        # a schema name equal to a helper the module imports (a struct Sequence, a field torch)
        # would shadow it: import the helper under a private alias instead
        self.names = {h: "_" + h if h in declared else h for h in ir.HELPERS}
        # a top-level class that a nested class of the same name shadows inside the enclosing
        # class bodies (struct Item; struct Order { struct Item {} items @0 :List(.Item); }):
        # references use a private alias, _top_Item
        self.shadowed = top & nested
        self.top_classes = top
        self.declared = declared | {"stubs"}
        self.typevar_names: dict[str, str] = {}

    def declared_names(self) -> tuple[set[str], set[str], set[str]]:
        """Python names this module's schema declares: ``(all of them, top-level class names,
        nested class names)``; every class, field, method and constant (generic parameters are
        named after them: :meth:`typevar`)."""
        nodes = self.nodes
        everything: set[str] = set()
        top: set[str] = set()
        nested: set[str] = set()
        stack = [(self.file_id, 0)]
        while stack:
            nid, depth = stack.pop()
            node = nodes.get(nid)
            if node is None:
                continue
            for n in node.get("nestedNodes") or []:
                child = nodes.get(n["id"])
                if child is None:
                    continue
                if "const" in child:
                    everything.add(constant_name(n["name"]))
                    continue
                if "struct" not in child and "enum" not in child and "interface" not in child:
                    continue
                names = {n["name"]}
                if "interface" in child:
                    names.add(n["name"] + "Mesh")
                everything |= names
                (nested if depth else top).update(names)
                stack.append((n["id"], depth + 1))
            for f in (node.get("struct") or {}).get("fields") or []:
                everything.add(member_name(f["name"], RESERVED_STRUCT))
                if "group" in f:
                    group = self.group_class(nid, f["name"])
                    everything.add(group)
                    nested.add(group)
                    stack.append((int(f["group"]["typeId"]), depth + 1))
            for m in (node.get("interface") or {}).get("methods") or []:
                everything.add(member_name(m["name"], RESERVED_MESH))
                for key in ("paramStructType", "resultStructType"):
                    sid = int(m[key])
                    if nodes.get(sid, {}).get("scopeId") == 0:  # implicit: generated here
                        stack.append((sid, depth + 1))
        return everything, top, nested

    def group_class(self, struct_id: int, field: str) -> str:
        """The class of group ``field`` of a struct: PascalCase of the field, with ``_`` appended
        when the struct declares a nested type of that name (``kind :group`` beside ``enum
        Kind``)."""
        name = pascal(field)
        nested = self.nodes[struct_id].get("nestedNodes") or []
        return name + "_" if any(n["name"] == name for n in nested) else name

    def helper(self, name: str) -> str:
        """How this module spells helper ``name`` (see :data:`ir.HELPERS`), recording its import."""
        if name == "abstractmethod":
            self.abc.add(name)
        elif name not in ("enum", "torch"):
            self.typing.add(name)
        return self.names[name]

    def typevar(self, name: str) -> str:
        """The TypeVar of generic parameter ``name``: itself, or with ``_`` appended until it
        names nothing else (a parameter ``Item`` of ``Box(Item)`` beside a struct ``Item``)."""
        py = self.typevar_names.get(name)
        if py is None:
            py = escape(name)
            taken = self.declared | set(self.names.values())
            while py in taken:
                py += "_"
            self.typevar_names[name] = py
            self.typevars.add(py)
        return py

    # -- locations -------------------------------------------------------------------------
    def error(self, where: tuple[str, ...], message: str) -> SchemaError:
        d = self.source.find(where)
        return SchemaError(self.path, d.line, d.column, message)

    def type_error(self, where: tuple[str, ...], message: str) -> SchemaError:
        """An error about the type of a field or parameter, located at it and naming it."""
        return self.error(where, f"{'.'.join(where)}: {message}")

    def doc(self, where: tuple[str, ...]) -> str:
        d = self.source.decls.get(where)
        return d.doc if d is not None else ""

    # -- names of nodes --------------------------------------------------------------------
    def schema_path(self, node_id: int) -> tuple[str, ...]:
        """Schema names from the file scope: ``("Point", "grp")``; a method's implicit params or
        results struct is the method itself (``("Shop", "listing")``)."""
        node = self.nodes[node_id]
        qualified = node["displayName"].split(":", 1)[-1]
        parts = qualified.split(".")
        if "$" in parts[-1]:  # "listing$Params"
            parts[-1] = parts[-1].split("$", 1)[0]
        return tuple(parts)

    def file_of(self, node_id: int) -> int:
        node = self.nodes[node_id]
        while node["scopeId"] != 0:
            node = self.nodes[node["scopeId"]]
        return int(node["id"])

    def py_qualname(self, node_id: int) -> str:
        """Dotted Python name in its module; group classes are PascalCase of the field name."""
        parts: list[str] = []
        node = self.nodes[node_id]
        while node["scopeId"] != 0:
            short = node["displayName"][node["displayNamePrefixLength"] :].rsplit(".", 1)[-1]
            is_group = node.get("struct", {}).get("isGroup", False)
            parts.append(self.group_class(node["scopeId"], short) if is_group else short)
            node = self.nodes[node["scopeId"]]
        return ".".join(reversed(parts))

    def ref(self, node_id: int, suffix: str = "") -> str:
        """How this module names the class of ``node_id`` (importing its module when foreign)."""
        name = self.py_qualname(node_id) + suffix
        fid = self.file_of(node_id)
        if fid == self.file_id:
            head, dot, rest = name.partition(".")
            return f"_top_{head}{dot}{rest}" if head in self.shadowed else name
        module = self.module_names.get(fid)
        if module is None:
            other = self.loaded.imported.get(fid, "another schema")
            raise GenerationError(
                f"{self.path}: uses {name} from {other}, which is not generated in this run; "
                "pass every imported schema to monarch-gen"
            )
        alias = "_m_" + module
        self.imports[alias] = f"from . import {module} as {alias}"
        return f"{alias}.{name}"

    def actor_file_name(self, node_id: int) -> str | None:
        if self.file_of(node_id) != ACTOR_FILE_ID:
            return None
        return self.schema_path(node_id)[-1]

    # -- types -----------------------------------------------------------------------------
    def map_type(
        self,
        t: dict[str, Any],
        where: tuple[str, ...],
        scope: dict[str, Any],
        *,
        method: bool = False,
    ) -> _Type:
        kind, body = next(iter(t.items()))
        if kind == "void":
            return _Type("None", "None", "None", "Void")
        if kind == "bool":
            return _Type("bool", "bool", "False", "Bool")
        if kind in _INTS:
            return _Type("int", "int", "0", kind[0].upper() + kind[1:].replace("int", "Int"))
        if kind in ("float32", "float64"):
            return _Type("float", "float", "0.0", "Float" + kind[5:])
        if kind == "text":
            return _Type("str", "str", '""', "Text")
        if kind == "data":
            return _Type("bytes | memoryview", "stubs.Bytes", 'b""', "Data")
        if kind == "list":
            depth, inner = 1, body["elementType"]
            while "list" in inner:
                depth, inner = depth + 1, inner["list"]["elementType"]
            if depth > MAX_LIST_DEPTH:
                raise self.type_error(
                    where,
                    f"List nested {depth} deep; monarch-gen supports at most {MAX_LIST_DEPTH} "
                    "(wrap inner lists in a struct)",
                )
            e = self.map_type(body["elementType"], where, scope, method=True)
            seq = self.helper("Sequence")
            return _Type(f"{seq}[{e.attr}]", f"{seq}[{e.attr}]", "()", f"List({e.expr})")
        if kind == "enum":
            name = self.ref(body["typeId"])
            first = self.enumerant_names(body["typeId"])[0]
            return _Type(name, name, f"{name}.{first}", f"Enum({name})", body["typeId"])
        if kind == "interface":
            iname = self.schema_path(body["typeId"])[-1]
            raise self.type_error(
                where, f"a raw interface type ({iname}) cannot be sent; use M.ActorRef({iname})"
            )
        if kind == "anyPointer":
            param = body.get("parameter") if body else None
            if param is None:
                return self.any_pointer(body or {}, where)
            bound = self.subst.get((int(param["scopeId"]), int(param["parameterIndex"])))
            if bound is not None:
                return bound
            scope_node = self.nodes[param["scopeId"]]
            if "struct" in scope and "struct" in scope_node and scope_node is not scope:
                raise self.outer_parameter(where, scope, scope_node, int(param["parameterIndex"]))
            name = self.typevar(scope_node["parameters"][param["parameterIndex"]]["name"])
            return _Type(name, f"{name} | None", "None", "Param")
        if kind == "struct":
            return self.map_struct(body, where, scope, method)
        raise self.type_error(where, f"unsupported type {kind}")

    def outer_parameter(
        self,
        where: tuple[str, ...],
        inner: dict[str, Any],
        outer: dict[str, Any],
        index: int,
    ) -> SchemaError:
        """A nested struct or group of ``Outer(T)`` that uses ``T`` (directly, in a list or as a
        type argument): its class would need ``T`` bound by the enclosing class, which Python's
        nested classes cannot express (mypy: T unbound)."""
        outer_name = ".".join(self.schema_path(int(outer["id"])))
        param = outer["parameters"][index]["name"]
        short = self.py_qualname(int(inner["id"])).rsplit(".", 1)[-1]
        return self.type_error(
            where,
            f"uses the generic parameter {param} of its enclosing struct {outer_name}: not "
            "supported; declare it at the top level with its own parameter "
            f"(struct {short}({param}) {{ ... }}, used as {short}({param}) inside {outer_name})",
        )

    def any_pointer(self, body: dict[str, Any], where: tuple[str, ...]) -> _Type:
        """``AnyPointer``/``AnyStruct``: any generated struct (``stubs.Struct``).

        A received value is an untyped view; ``SomeStruct.from_any(value)`` reads it as that
        struct. ``AnyList``, ``Capability`` and implicit method parameters have no mapping.
        """
        which = next(iter(body.get("unconstrained") or {"anyKind": None}))
        if "implicitMethodParameter" in body:
            raise self.error(where, "generic methods are not supported")
        if which not in ("anyKind", "struct"):
            kind = {"list": "AnyList", "capability": "Capability"}.get(which, which)
            raise self.type_error(
                where,
                f"{kind} is not supported; use AnyPointer or AnyStruct (any struct), "
                "List(T) or M.ActorRef(T)",
            )
        return _Type("stubs.Struct", "stubs.Struct | None", "None", "AnyStruct")

    def bindings(
        self, brand: dict[str, Any] | None, where: tuple[str, ...]
    ) -> dict[tuple[int, int], _Type]:
        """Generic parameter (scope id, index) -> bound type, from a ``Brand``."""
        out: dict[tuple[int, int], _Type] = {}
        for s in (brand or {}).get("scopes") or []:
            for i, bnd in enumerate(s.get("bind") or []):
                t = bnd.get("type") if isinstance(bnd, dict) else None
                if t:
                    out[(int(s["scopeId"]), i)] = self.map_type(t, where, {}, method=True)
        return out

    def map_struct(
        self, body: dict[str, Any], where: tuple[str, ...], scope: dict[str, Any], method: bool
    ) -> _Type:
        tid = body["typeId"]
        special = self.actor_file_name(tid)
        if special == "Tensor":
            self.uses_torch = True
            tensor = self.helper("torch") + ".Tensor"
            return _Type(tensor, f"{tensor} | None", "None", "Tensor")
        if special == "ActorRef":
            bound = self.brand_args(body, tid)
            target = bound[0] if bound else {}
            iid = target.get("interface", {}).get("typeId") if isinstance(target, dict) else None
            if iid is None or not self.is_actor(iid):
                raise self.type_error(where, "M.ActorRef(T) needs an $M.actor interface as T")
            mesh = self.ref(iid, "Mesh")
            return _Type(
                mesh if method else f"{mesh} | None", f"{mesh} | None", "None", f"Ref({mesh})"
            )
        if special == "RDMABuffer":
            # monarch.rdma converts the struct (an adapter it registers on import): the runtime
            # below it cannot name the class, so the module imports it for the annotation and
            # for the adapter.
            self.imports[RDMA_ALIAS] = f"import monarch.rdma as {RDMA_ALIAS}"
            cls = f"{RDMA_ALIAS}.RDMABuffer"
            return _Type(
                cls if method else f"{cls} | None", f"{cls} | None", "None", f"Adapted({tid:#x})"
            )
        name = self.ref(tid)
        args = [self.brand_arg(a, where, scope) for a in self.brand_args(body, tid)]
        attr = f"{name}[{', '.join(args)}]" if args else name
        return _Type(attr, f"{attr} | None", "None", f"Struct({name})")

    def brand_args(self, body: dict[str, Any], tid: int) -> list[Any]:
        for s in (body.get("brand") or {}).get("scopes") or []:
            if s["scopeId"] == tid and "bind" in s:
                return [b.get("type", {}) for b in s["bind"]]
        return []

    def brand_arg(self, t: dict[str, Any], where: tuple[str, ...], scope: dict[str, Any]) -> str:
        kind = next(iter(t))
        if kind not in ("struct", "text", "data", "anyPointer"):
            raise self.type_error(
                where,
                f"generic parameters bound to {kind} are not supported (use a struct, Text or Data)",
            )
        return self.map_type(t, where, scope, method=True).attr

    def is_actor(self, iid: int) -> bool:
        return any(a["id"] == ANN_ACTOR for a in self.nodes[iid].get("annotations") or [])

    # -- structs ---------------------------------------------------------------------------
    def fields(
        self,
        node: dict[str, Any],
        where: tuple[str, ...],
        *,
        required: bool = False,
        method: bool = False,
    ) -> list[ir.Field]:
        out: list[ir.Field] = []
        seen: dict[str, str] = {}
        defaults = self.loaded.defaults.get(int(node["id"]), {})
        raw = node["struct"].get("fields") or []
        ordered = [f for f in raw if f["discriminantValue"] == NO_DISCRIMINANT]
        ordered += sorted(
            (f for f in raw if f["discriminantValue"] != NO_DISCRIMINANT),
            key=lambda f: f["discriminantValue"],
        )
        for f in ordered:
            wire = f["name"]
            fwhere = (*where, wire)
            py = member_name(wire, RESERVED_STRUCT)
            if py in seen:
                raise self.error(
                    fwhere,
                    f"name clash after renaming: {wire!r} and {seen[py]!r} both become {py!r}",
                )
            seen[py] = wire
            in_union = f["discriminantValue"] != NO_DISCRIMINANT
            tensor = any(a["id"] == ANN_TENSOR for a in f.get("annotations") or [])
            if "group" in f:
                cls = self.ref(f["group"]["typeId"])
                t = _Type(cls, f"{cls} | None", "None", f"Group({cls})")
            else:
                slot = f["slot"]
                kind = next(iter(slot["type"]))
                if tensor and kind != "data":
                    raise self.type_error(
                        fwhere, f"$tensor applies to Data fields only, not {kind}"
                    )
                t = self.map_type(slot["type"], fwhere, node, method=method)
                if tensor:
                    self.uses_torch = True
                    cls = self.helper("torch") + ".Tensor"
                    t = _Type(cls, f"{cls} | None", "None", "TensorData")
                elif slot.get("hadExplicitDefault"):
                    t = self.with_default(t, kind, slot["defaultValue"], wire in defaults)
            init, default = t.init, t.default
            if (
                t.expr.startswith("Enum(")
                and default is not None
                and "." in t.attr
                and not t.attr.startswith("_m_")
            ):
                # a class body cannot name its own (or an outer) class yet: nested enum defaults
                # are spelled from inside the class, or left to the schema's default
                here = self.py_qualname(int(node["id"])) + "."
                if t.attr.startswith(here) and "." not in t.attr[len(here) :]:
                    default = default[len(here) :]
                else:
                    init, default = f"{init} | None", "None"
            if in_union and default != "None":
                init, default = f"{init} | None", "None"
            if required and not in_union and not (f.get("slot") or {}).get("hadExplicitDefault"):
                init, default = t.init.removesuffix(" | None"), None
            doc = self.doc(fwhere)
            if t.expr == "AnyStruct":
                doc = (doc + "\n\n" if doc else "") + ANY_POINTER_DOC
            out.append(
                ir.Field(
                    name=py,
                    wire=wire,
                    annotation=t.attr,
                    init_annotation=init,
                    init_default=default,
                    expr=t.expr,
                    in_union=in_union,
                    doc=doc,
                )
            )
        return out

    def with_default(
        self, t: _Type, kind: str, value: dict[str, Any], pointer_default: bool
    ) -> _Type:
        v: Any = next(iter(value.values()), None)
        if kind in _INTS:
            return _Type(t.attr, t.init, str(int(v)), t.expr)
        if kind == "bool":
            return _Type(t.attr, t.init, str(bool(v)), t.expr)
        if kind in ("float32", "float64"):
            f = float(v)
            text = f'float("{f}")' if math.isinf(f) or math.isnan(f) else _float_text(f, kind)
            return _Type(t.attr, t.init, text, t.expr)
        if kind == "text":
            return _Type(t.attr, t.init, repr(v), t.expr)
        if kind == "data":
            import base64

            return _Type(t.attr, t.init, repr(base64.b64decode(v["$bytes"])), t.expr)
        if kind == "enum":
            enumerant = self.enumerant_names(t.enum_id)[int(v)]
            return _Type(t.attr, t.init, f"{t.attr}.{enumerant}", t.expr, t.enum_id)
        # struct/list defaults live in the schema: unset means "the schema's default"
        return _Type(t.attr, f"{t.init} | None" if "None" not in t.init else t.init, "None", t.expr)

    def enumerant_names(self, enum_id: int) -> list[str]:
        """The Python member names of an enum, by value: the one place enumerants are renamed
        (members, defaults and constants all use it)."""
        return [escape_enumerant(e["name"]) for e in self.nodes[enum_id]["enum"]["enumerants"]]

    def struct(
        self,
        node_id: int,
        *,
        name: str | None = None,
        doc: str | None = None,
        required: bool = False,
    ) -> ir.Struct:
        node = self.nodes[node_id]
        where = self.schema_path(node_id)
        fields = self.fields(node, where, required=required)
        union = [f.name for f in fields if f.in_union]
        if union:
            self.helper("Literal")
        enums, structs = self.nested(node, where)
        for f in node["struct"].get("fields") or []:
            if "group" in f:
                structs.append(self.struct(f["group"]["typeId"]))
        params = [self.typevar(p["name"]) for p in node.get("parameters") or []]
        if params:
            self.helper("Generic")
        short = name or self.py_qualname(node_id).rsplit(".", 1)[-1]
        consts: list[ir.Const] = []
        for n in node.get("nestedNodes") or []:
            child = self.nodes.get(n["id"])
            if child is not None and "const" in child:
                consts.append(const(self, n["id"], child, owner=self.py_qualname(node_id)))
        if consts:
            self.helper("ClassVar")
            self.late_consts.extend(consts)
        return ir.Struct(
            name=short,
            qualname=name or self.py_qualname(node_id),
            node_id=hex(node_id),
            type_params=params,
            fields=fields,
            union_literal=", ".join(f'"{n}"' for n in union),
            nested_enums=enums,
            nested_structs=structs,
            consts=consts,
            doc=doc if doc is not None else (self.doc(where) or f"The {'.'.join(where)} struct."),
            alias=self.alias_of(node_id),
        )

    def enum(self, node_id: int) -> ir.Enum:
        self.uses_enum = True
        node = self.nodes[node_id]
        where = self.schema_path(node_id)
        names = self.enumerant_names(node_id)
        members = [
            ir.Enumerant(name=names[i], value=i, doc=self.doc((*where, e["name"])))
            for i, e in enumerate(node["enum"]["enumerants"])
        ]
        return ir.Enum(
            name=where[-1],
            qualname=self.py_qualname(node_id),
            enumerants=members,
            doc=self.doc(where) or f"The {'.'.join(where)} enum.",
            alias=self.alias_of(node_id),
        )

    def alias_of(self, node_id: int, suffix: str = "") -> str:
        """The private alias of a top-level class that a nested class shadows; "" otherwise."""
        if self.nodes[node_id]["scopeId"] != self.file_id:
            return ""
        name = self.py_qualname(node_id) + suffix
        return "_top_" + name if name in self.shadowed else ""

    def nested(
        self, node: dict[str, Any], where: tuple[str, ...]
    ) -> tuple[list[ir.Enum], list[ir.Struct]]:
        enums: list[ir.Enum] = []
        structs: list[ir.Struct] = []
        for n in node.get("nestedNodes") or []:
            child = self.nodes.get(n["id"])
            if child is None:
                continue
            if "enum" in child:
                enums.append(self.enum(n["id"]))
            elif "struct" in child:
                structs.append(self.struct(n["id"]))
        return enums, structs


def _float_text(f: float, kind: str) -> str:
    """The shortest decimal that reads back as the same float32/float64."""
    if kind == "float64":
        return repr(f)
    for digits in range(1, 18):
        text = f"{f:.{digits}g}"
        if struct.unpack("<f", struct.pack("<f", float(text)))[0] == f:
            return repr(float(text))
    return repr(f)


_ENUM_RESERVED = frozenset(
    {
        "name", "value",  # Enum's own member attributes
        "mro",  # refused by enum.Enum ("invalid enum member name")
        # attributes of int, which an IntEnum member is: mypy rejects a member hiding one
        "real", "imag", "numerator", "denominator", "conjugate",
    }
)  # fmt: skip
"""Enumerant names that become ``name_`` (a fixed list: the output must not depend on the
Python version that generates it)."""


def escape_enumerant(name: str) -> str:
    from .naming import escape

    return escape(name, _ENUM_RESERVED)


def build_module(loaded: Loaded, path: str, module_names: dict[int, str]) -> ir.Module:
    """The IR of the module for schema ``path``.

    Args:
        loaded: every loaded schema node (requested files and their imports).
        path: the schema file, as given by the user (used in messages and the header).
        module_names: file id -> generated module name, for cross-schema references.

    Raises:
        SchemaError: a schema rule is broken (located at the declaration).
    """
    from .build_actors import build_interfaces

    b = _Builder(loaded, path, module_names)
    file_node = b.nodes[b.file_id]
    enums, structs = b.nested(file_node, ())
    consts: list[ir.Const] = []
    for n in file_node.get("nestedNodes") or []:
        child = b.nodes.get(n["id"])
        if child is not None and "const" in child:
            consts.append(const(b, n["id"], child))
    consts += b.late_consts
    interfaces = build_interfaces(b, file_node)
    return ir.Module(
        source=PurePath(path).as_posix(),
        schema_file=PurePath(path).name,
        doc=b.source.file_doc or f"Typed actors and structs of {PurePath(path).name}.",
        # absolute imports first, then sibling generated modules
        imports=sorted(b.imports.values(), key=lambda line: (line.startswith("from ."), line)),
        typing_names=sorted(b.typing),
        abc_names=sorted(b.abc),
        names=b.names,
        typevars=sorted(b.typevars),
        uses_torch=b.uses_torch,
        uses_enum=b.uses_enum,
        enums=enums,
        structs=structs,
        internal_structs=b.internal,
        consts=consts,
        interfaces=interfaces,
    )


def const(b: _Builder, node_id: int, node: dict[str, Any], owner: str = "") -> ir.Const:
    """A schema constant: its annotation and its value as a Python expression.

    ``owner`` is the qualified class name of the struct a nested constant belongs to ("" at file
    scope); nested constants become class attributes, assigned after every class is defined.
    """
    where = b.schema_path(node_id)
    t = node["const"]["type"]
    value: Any = b.loaded.consts.get(node_id)
    name = constant_name(where[-1])
    if not owner and name in b.top_classes:  # const ab beside struct AB
        name += "_"
    kind = next(iter(t))
    if kind == "list":  # a tuple: constants are immutable
        elem = b.map_type(t["list"]["elementType"], where, node, method=True)
        annotation = f"tuple[{elem.attr}, ...]"
    else:
        annotation = "bytes" if kind == "data" else b.map_type(t, where, node, method=True).attr
    return ir.Const(
        name=name,
        owner=owner,
        annotation=annotation,
        value=value_source(b, t, value, where),
        doc=b.doc(where),
    )


def value_source(b: _Builder, t: dict[str, Any], v: Any, where: tuple[str, ...]) -> str:
    """A Python expression for a schema value ``v`` (as extracted: JSON) of type ``t``.

    Raises:
        SchemaError: the type has no constant form (tensors, actor references, AnyPointer...).
    """
    kind, body = next(iter(t.items()))
    if kind == "void":
        return "None"
    if kind in _INTS or kind in ("bool", "float32", "float64", "text", "data"):
        if kind == "data":
            import base64

            return repr(base64.b64decode(v["$bytes"])) if v is not None else 'b""'
        if v is None:
            return '""' if kind == "text" else "0"
        return b.with_default(_Type("", "", None, ""), kind, {kind: v}, False).default or "None"
    if kind == "enum":
        names = b.enumerant_names(body["typeId"])
        index = _enumerant_index(b, body["typeId"], v)
        return f"{b.ref(body['typeId'])}.{names[index]}"
    if kind == "list":
        items = [value_source(b, body["elementType"], x, where) for x in v or []]
        return "(" + ", ".join(items) + ("," if len(items) == 1 else "") + ")"
    if (
        kind == "struct"
        and b.actor_file_name(body["typeId"]) is None
        and not b.brand_args(body, body["typeId"])
    ):
        return _struct_source(b, body["typeId"], v or {}, where)
    what = "a generic struct" if kind == "struct" and b.brand_args(body, body["typeId"]) else kind
    if kind == "struct" and b.actor_file_name(body["typeId"]):
        what = "M." + str(b.actor_file_name(body["typeId"]))
    raise b.error(where, f"a constant cannot hold {what} (constants hold plain schema values)")


def _enumerant_index(b: _Builder, enum_id: int, v: Any) -> int:
    if isinstance(v, int):
        return v
    wire = [e["name"] for e in b.nodes[enum_id]["enum"]["enumerants"]]
    return wire.index(str(v))


def _struct_source(b: _Builder, struct_id: int, v: dict[str, Any], where: tuple[str, ...]) -> str:
    node = b.nodes[struct_id]
    if node.get("parameters"):
        raise b.error(where, "a constant cannot hold a generic struct")
    args: list[str] = []
    for f in node["struct"].get("fields") or []:
        wire = f["name"]
        if wire not in v:
            continue
        py = member_name(wire, RESERVED_STRUCT)
        if "group" in f:
            text = _struct_source(b, int(f["group"]["typeId"]), v[wire] or {}, where)
        else:
            text = value_source(b, f["slot"]["type"], v[wire], where)
        args.append(f"{py}={text}")
    return f"{b.ref(struct_id)}({', '.join(args)})"
