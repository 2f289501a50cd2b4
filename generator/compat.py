"""``monarch-gen compat OLD NEW``: the changes between two versions of a schema that break the wire.

The rules are Cap'n Proto's ("Evolving your protocol", capnproto.org/language.html) plus what our
envelope depends on: a call names its endpoint by the schema's method name (``Envelope.endpoint``)
and carries the stream flag. Breaking: a field, enumerant, method or interface removed; a field's
type, default value or union membership changed; a method renamed, moved to another ordinal, or
switched to/from ``$M.stream``; an interface's id changed or its ``$M.actor`` removed.
Compatible (listed with ``--verbose``): new fields with new ordinals, new union members, new
enumerants at the end, new methods, new types, renames of fields, enumerants, structs and
parameters (the wire carries none of those names; Python callers passing a renamed parameter by
keyword must change).

Nodes are paired by id, then (for declarations whose id changed) by their qualified name.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .load import Loaded
from .source import SourceInfo

__all__ = ["Change", "compare"]

ANN_ACTOR = 0xD566B8C0FF4AE03B
ANN_STREAM = 0xF9E7F927197F6269
NO_DISCRIMINANT = 0xFFFF
_PRIMITIVE_NAMES = {
    k: k[:1].upper() + k[1:].replace("int", "Int")
    for k in ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64")
}
_PRIMITIVE_NAMES.update(uint8="UInt8", uint16="UInt16", uint32="UInt32", uint64="UInt64")


@dataclass(frozen=True)
class Change:
    """One difference: where (in the new schema when it still has the declaration, else the
    old one), whether it breaks the wire, and what it is."""

    path: str
    line: int
    column: int
    breaking: bool
    message: str

    def __str__(self) -> str:
        kind = "breaking" if self.breaking else "compatible"
        return f"{self.path}:{self.line}:{self.column}: {kind}: {self.message}"


def _qualified(node: dict[str, Any]) -> tuple[str, ...]:
    parts = node["displayName"].split(":", 1)[-1].split(".")
    if "$" in parts[-1]:
        parts[-1] = parts[-1].split("$", 1)[0]
    return tuple(parts)


def _annotations(node_or_member: dict[str, Any]) -> set[int]:
    return {int(a["id"]) for a in node_or_member.get("annotations") or []}


class _Comparer:
    def __init__(self, old: Loaded, old_path: str, new: Loaded, new_path: str) -> None:
        self.old, self.new = old, new
        self.old_path, self.new_path = old_path, new_path
        self.old_src: SourceInfo = old.sources[old_path]
        self.new_src: SourceInfo = new.sources[new_path]
        self.changes: list[Change] = []
        self.old_file = old.file_id(old_path)
        self.new_file = new.file_id(new_path)
        self.pair: dict[int, int] = {}  # old node id -> new node id

    # -- reporting -------------------------------------------------------------------------
    def report(
        self, where: tuple[str, ...], breaking: bool, message: str, *, new: bool = True
    ) -> None:
        src, path = (self.new_src, self.new_path) if new else (self.old_src, self.old_path)
        d = src.find(where)
        self.changes.append(Change(path, d.line, d.column, breaking, message))

    # -- pairing ---------------------------------------------------------------------------
    def file_nodes(self, loaded: Loaded, file_id: int) -> dict[int, dict[str, Any]]:
        out: dict[int, dict[str, Any]] = {}
        for nid, node in loaded.nodes.items():
            scope = node
            while scope.get("scopeId"):
                parent = loaded.nodes.get(scope["scopeId"])
                if parent is None:
                    break
                scope = parent
            if int(scope["id"]) == file_id and nid != file_id:
                out[nid] = node
        return out

    def run(self) -> list[Change]:
        olds = self.file_nodes(self.old, self.old_file)
        news = self.file_nodes(self.new, self.new_file)
        by_name = {_qualified(n): nid for nid, n in news.items()}
        for oid, onode in olds.items():
            if oid in news:
                self.pair[oid] = oid
            elif _qualified(onode) in by_name:
                self.pair[oid] = by_name[_qualified(onode)]
        paired_new = set(self.pair.values())
        for oid, onode in sorted(olds.items(), key=lambda kv: _qualified(kv[1])):
            if self.method_struct(onode):
                continue  # compared with their methods
            nid = self.pair.get(oid)
            where = _qualified(onode)
            if nid is None:
                kind = next(
                    (k for k in ("struct", "enum", "interface", "const") if k in onode), "node"
                )
                breaking = kind == "interface" and ANN_ACTOR in _annotations(onode)
                self.report(
                    where,
                    breaking,
                    f"{kind} {'.'.join(where)} removed"
                    + (": old clients still call it" if breaking else ""),
                    new=False,
                )
                continue
            nnode = news[nid]
            renamed = _qualified(nnode) != where and not nnode.get("struct", {}).get("isGroup")
            if nid == oid and renamed:
                self.report(
                    _qualified(nnode),
                    False,
                    f"{'.'.join(_qualified(nnode))}: renamed from {'.'.join(where)!r} "
                    "(its id is kept; the wire carries no type names)",
                )
            if nid != oid:
                is_actor = "interface" in onode
                self.report(
                    _qualified(nnode),
                    is_actor,
                    f"{'.'.join(where)}: id changed from {oid:#x} to {nid:#x}"
                    + (
                        " (interfaces are identified by id: give it back its old @id)"
                        if is_actor
                        else ""
                    ),
                )
            if "struct" in onode and "struct" in nnode:
                if not onode["struct"].get("isGroup"):
                    self.struct(onode, nnode, _qualified(nnode), params=False)
            elif "enum" in onode and "enum" in nnode:
                self.enum(onode, nnode)
            elif "interface" in onode and "interface" in nnode:
                self.interface(onode, nnode)
            elif "const" in onode and "const" in nnode:
                pass  # constants never travel
            else:
                self.report(_qualified(nnode), True, f"{'.'.join(where)} changed kind")
        for nid, nnode in sorted(news.items(), key=lambda kv: _qualified(kv[1])):
            if (
                nid not in paired_new
                and not self.method_struct(nnode)
                and not nnode.get("struct", {}).get("isGroup")
            ):
                kind = next(
                    (k for k in ("struct", "enum", "interface", "const") if k in nnode), "node"
                )
                self.report(_qualified(nnode), False, f"new {kind} {'.'.join(_qualified(nnode))}")
        return self.changes

    @staticmethod
    def method_struct(node: dict[str, Any]) -> bool:
        return "struct" in node and "$" in node["displayName"].rsplit(".", 1)[-1]

    # -- types -----------------------------------------------------------------------------
    def same_type(self, a: dict[str, Any], b: dict[str, Any]) -> bool:
        ka, kb = next(iter(a)), next(iter(b))
        if ka != kb:
            return False
        va, vb = a[ka] or {}, b[kb] or {}
        if ka == "list":
            return self.same_type(va["elementType"], vb["elementType"])
        if ka in ("struct", "enum", "interface"):
            oid, nid = int(va["typeId"]), int(vb["typeId"])
            if self.pair.get(oid, oid) != nid:
                return False
            return self.same_brand(va.get("brand"), vb.get("brand"))
        if ka == "anyPointer":
            return json.dumps(va, sort_keys=True) == json.dumps(vb, sort_keys=True)
        return True

    def same_brand(self, a: dict[str, Any] | None, b: dict[str, Any] | None) -> bool:
        def binds(brand: dict[str, Any] | None) -> list[Any]:
            return [
                [bd.get("type") for bd in s.get("bind") or []]
                for s in (brand or {}).get("scopes") or []
            ]

        ba, bb = binds(a), binds(b)
        if len(ba) != len(bb):
            return False
        for xa, xb in zip(ba, bb):
            if len(xa) != len(xb):
                return False
            for ta, tb in zip(xa, xb):
                if (ta is None) != (tb is None) or (ta and tb and not self.same_type(ta, tb)):
                    return False
        return True

    @staticmethod
    def type_name(t: dict[str, Any], loaded: Loaded) -> str:
        kind = next(iter(t))
        body = t[kind] or {}
        if kind == "list":
            return f"List({_Comparer.type_name(body['elementType'], loaded)})"
        if kind in ("struct", "enum", "interface"):
            node = loaded.nodes.get(int(body["typeId"]))
            name = ".".join(_qualified(node)) if node else kind
            # a generic's binding names the type (ActorRef(Worker), Page(Items)): without it
            # a changed argument reads "from ActorRef to ActorRef"
            args = [
                _Comparer.type_name(bd["type"], loaded) if bd.get("type") else "AnyPointer"
                for scope in (body.get("brand") or {}).get("scopes") or []
                for bd in scope.get("bind") or []
            ]
            return f"{name}({', '.join(args)})" if args else name
        return _PRIMITIVE_NAMES.get(kind, kind[:1].upper() + kind[1:])

    # -- structs ---------------------------------------------------------------------------
    def struct(
        self, onode: dict[str, Any], nnode: dict[str, Any], where: tuple[str, ...], *, params: bool
    ) -> None:
        ofields = self.slots(onode, self.old)
        nfields = self.slots(nnode, self.new)
        odefaults = self.old.defaults.get(int(onode["id"]), {})
        ndefaults = self.new.defaults.get(int(nnode["id"]), {})
        for ordinal, (oname, of, ogroups) in sorted(ofields.items()):
            hit = nfields.get(ordinal)
            owhere = (*where, *ogroups, oname)
            if hit is None:
                self.report(
                    owhere,
                    True,
                    f"{'.'.join(owhere)} @{ordinal} removed: old peers still send and read it",
                    new=False,
                )
                continue
            nname, nf, ngroups = hit
            nwhere = (*where, *ngroups, nname)
            label = f"{'.'.join(nwhere)} @{ordinal}"
            retyped = not self.same_type(of["slot"]["type"], nf["slot"]["type"])
            if retyped:
                self.report(
                    nwhere,
                    True,
                    f"{label}: type changed from {self.type_name(of['slot']['type'], self.old)} "
                    f"to {self.type_name(nf['slot']['type'], self.new)}",
                )
            if (of["discriminantValue"] == NO_DISCRIMINANT) != (
                nf["discriminantValue"] == NO_DISCRIMINANT
            ) or ogroups != ngroups:
                self.report(nwhere, True, f"{label}: moved into or out of a union or group")
            elif of["discriminantValue"] != nf["discriminantValue"]:
                self.report(nwhere, True, f"{label}: its union discriminant changed")
            od = (of["slot"].get("defaultValue"), odefaults.get(oname))
            nd = (nf["slot"].get("defaultValue"), ndefaults.get(nname))
            if not retyped and json.dumps(od, sort_keys=True) != json.dumps(nd, sort_keys=True):
                self.report(
                    nwhere,
                    True,
                    f"{label}: default value changed (values are stored XORed with the default)",
                )
            if oname != nname:
                extra = "; Python callers passing it by keyword must change" if params else ""
                self.report(
                    nwhere,
                    False,
                    f"{label}: renamed from {oname!r} (the wire carries no field names{extra})",
                )
        for ordinal, (nname, _nf, ngroups) in sorted(nfields.items()):
            if ordinal not in ofields:
                nwhere = (*where, *ngroups, nname)
                self.report(nwhere, False, f"new field {'.'.join(nwhere)} @{ordinal}")

    def slots(
        self, node: dict[str, Any], loaded: Loaded, groups: tuple[str, ...] = ()
    ) -> dict[int, tuple[str, dict[str, Any], tuple[str, ...]]]:
        """Ordinal -> (name, field, enclosing group names) over the struct and its groups."""
        out: dict[int, tuple[str, dict[str, Any], tuple[str, ...]]] = {}
        for f in node["struct"].get("fields") or []:
            if "group" in f:
                g = loaded.nodes.get(int(f["group"]["typeId"]))
                if g is not None:
                    out.update(self.slots(g, loaded, (*groups, f["name"])))
            else:
                ordinal = (f.get("ordinal") or {}).get("explicit")
                if ordinal is not None:
                    out[int(ordinal)] = (f["name"], f, groups)
        return out

    # -- enums -----------------------------------------------------------------------------
    def enum(self, onode: dict[str, Any], nnode: dict[str, Any]) -> None:
        where = _qualified(nnode)
        olds = [e["name"] for e in onode["enum"]["enumerants"]]
        news = [e["name"] for e in nnode["enum"]["enumerants"]]
        for i, name in enumerate(olds):
            if i >= len(news):
                self.report(
                    where,
                    True,
                    f"{'.'.join(where)}.{name} (= {i}) removed: old peers still send it",
                )
            elif news[i] != name:
                self.report(
                    (*where, news[i]),
                    False,
                    f"{'.'.join(where)}.{news[i]} (= {i}): renamed from {name!r} (the wire carries numbers)",
                )
        for i in range(len(olds), len(news)):
            self.report(
                (*where, news[i]), False, f"new enumerant {'.'.join(where)}.{news[i]} = {i}"
            )

    # -- interfaces ------------------------------------------------------------------------
    def interface(self, onode: dict[str, Any], nnode: dict[str, Any]) -> None:
        where = _qualified(nnode)
        name = ".".join(where)
        if ANN_ACTOR in _annotations(onode) and ANN_ACTOR not in _annotations(nnode):
            self.report(where, True, f"{name}: no longer an $M.actor interface")
        omethods = onode["interface"].get("methods") or []
        nmethods = nnode["interface"].get("methods") or []
        nby_name = {m["name"]: (i, m) for i, m in enumerate(nmethods)}
        oby_name = {m["name"] for m in omethods}
        for i, om in enumerate(omethods):
            hit = nby_name.get(om["name"])
            if hit is None:
                if i < len(nmethods) and nmethods[i]["name"] not in oby_name:
                    nm = nmethods[i]
                    self.report(
                        (*where, nm["name"]),
                        True,
                        f"{name}.{nm['name']} @{i}: renamed from {om['name']!r}; calls name their "
                        "endpoint on the wire (Envelope.endpoint), so old clients' calls fail",
                    )
                    self.method(om, nm, (*where, nm["name"]))
                else:
                    self.report(
                        (*where, om["name"]),
                        True,
                        f"{name}.{om['name']} @{i} removed: old clients still call it",
                        new=False,
                    )
                continue
            j, nm = hit
            mwhere = (*where, nm["name"])
            if j != i:
                self.report(
                    mwhere,
                    True,
                    f"{name}.{nm['name']}: ordinal changed from @{i} to @{j} (Cap'n Proto RPC peers call by ordinal)",
                )
            self.method(om, nm, mwhere)
        for j, nm in enumerate(nmethods):
            if nm["name"] not in oby_name and not (
                j < len(omethods) and omethods[j]["name"] not in nby_name
            ):
                self.report((*where, nm["name"]), False, f"new method {name}.{nm['name']} @{j}")

    def method(self, om: dict[str, Any], nm: dict[str, Any], where: tuple[str, ...]) -> None:
        label = ".".join(where)
        if (ANN_STREAM in _annotations(om)) != (ANN_STREAM in _annotations(nm)):
            self.report(
                where,
                True,
                f"{label}: $M.stream added or removed (the call's stream flag and reply shape change)",
            )
        for key in ("paramStructType", "resultStructType"):
            o = self.old.nodes[int(om[key])]
            n = self.new.nodes[int(nm[key])]
            implicit = o["scopeId"] == 0 and n["scopeId"] == 0
            if implicit:
                self.struct(o, n, where, params=key == "paramStructType")
            else:
                brand = "paramBrand" if key == "paramStructType" else "resultBrand"
                ot = {"struct": {"typeId": om[key], "brand": om.get(brand)}}
                nt = {"struct": {"typeId": nm[key], "brand": nm.get(brand)}}
                if (o["scopeId"] == 0) != (n["scopeId"] == 0) or not self.same_type(ot, nt):
                    what = "parameters" if key == "paramStructType" else "results"
                    before = "(...)" if o["scopeId"] == 0 else self.type_name(ot, self.old)
                    after = "(...)" if n["scopeId"] == 0 else self.type_name(nt, self.new)
                    self.report(
                        where, True, f"{label}: {what} type changed from {before} to {after}"
                    )


def compare(old: Loaded, old_path: str, new: Loaded, new_path: str) -> list[Change]:
    """Every change from ``old_path`` (in ``old``) to ``new_path`` (in ``new``), breaking and not.

    Args:
        old: the loaded old version (see :func:`monarch.generator.load.load`).
        old_path: the old schema's path as loaded.
        new: the loaded new version.
        new_path: the new schema's path as loaded.

    Returns:
        Changes in declaration order of the old schema, then new declarations.
    """
    return _Comparer(old, old_path, new, new_path).run()
