"""The IR of ``$M.actor`` interfaces: abstract bases, mesh proxies and their endpoints."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import ir
from .naming import RESERVED_MESH, member_name, upper_snake

if TYPE_CHECKING:
    from .build import _Builder

__all__ = ["build_interfaces"]


def build_interfaces(b: _Builder, file_node: dict[str, Any]) -> list[ir.Interface]:
    """Interfaces of the file in dependency order (a base before the interfaces extending it)."""
    found: list[int] = []

    def collect(node: dict[str, Any]) -> None:
        for n in node.get("nestedNodes") or []:
            child = b.nodes.get(n["id"])
            if child is None:
                continue
            if "interface" in child and b.is_actor(n["id"]):
                found.append(n["id"])
            collect(child)

    collect(file_node)
    order: list[int] = []

    def visit(iid: int) -> None:
        if iid in order:
            return
        for sup in b.nodes[iid]["interface"].get("superclasses") or []:
            if b.file_of(sup["id"]) == b.file_id and sup["id"] in found:
                visit(sup["id"])
        order.append(iid)

    for iid in found:
        visit(iid)
    taken: dict[str, str] = {}
    for n in file_node.get("nestedNodes") or []:
        child = b.nodes.get(n["id"])
        if child is not None and "interface" not in child:
            kind = next(
                (k for k in ("struct", "enum", "const", "annotation") if k in child), "declaration"
            )
            taken[n["name"]] = f"{kind} {n['name']}"
    return [interface(b, iid, taken) for iid in order]


def _claim(
    b: _Builder, taken: dict[str, str], name: str, owner: str, where: tuple[str, ...]
) -> None:
    if name in taken:
        raise b.error(
            where, f"name clash after renaming: {owner} and {taken[name]} both define {name!r}"
        )
    taken[name] = owner


def interface(b: _Builder, iid: int, taken: dict[str, str]) -> ir.Interface:
    node = b.nodes[iid]
    where = b.schema_path(iid)
    name = b.py_qualname(iid)
    if "." in name:
        raise b.error(where, "actor interfaces must be declared at file scope")
    if node.get("parameters"):
        # an endpoint's codec needs concrete types when the actor is spawned; a generic mesh
        # class would leave T unbound in every stub (a mypy error)
        params = ", ".join(p["name"] for p in node["parameters"])
        raise b.error(
            where,
            f"generic actor interfaces are not supported ({name}({params})); use a generic "
            f"struct as the parameter or result instead (struct Box({params}) {{ ... }})",
        )
    mesh = name + "Mesh"
    _claim(b, taken, mesh, f"interface {name}", where)
    actor_bases: list[str] = []
    mesh_bases: list[str] = []
    inherited: dict[str, tuple[int, int, str]] = {}
    for sup in node["interface"].get("superclasses") or []:
        if not b.is_actor(sup["id"]):
            raise b.error(
                where,
                f"{name} extends {b.schema_path(sup['id'])[-1]}, which is not an $M.actor interface",
            )
        actor_bases.append(b.ref(sup["id"]))
        mesh_bases.append(b.ref(sup["id"], "Mesh"))
        _inherited_names(b, sup["id"], inherited, name, where)
    b.helper("abstractmethod")
    methods = []
    seen = {py: wire for py, (_, _, wire) in inherited.items()}
    for i, m in enumerate(node["interface"].get("methods") or []):
        mwhere = (*where, m["name"])
        py = member_name(m["name"], RESERVED_MESH)
        if py in seen:
            raise b.error(
                mwhere,
                f"name clash after renaming: method {m['name']!r} and {seen[py]!r} both become {py!r}",
            )
        seen[py] = m["name"]
        methods.append(method(b, iid, i, m, mwhere, name, taken))
    return ir.Interface(
        name=name,
        mesh=mesh,
        alias=b.alias_of(iid),
        mesh_alias=b.alias_of(iid, "Mesh"),
        actor_bases=actor_bases,
        mesh_bases=mesh_bases or ["stubs.ActorMesh[" + repr(name).replace("'", '"') + "]"],
        mesh_classvar=f"{b.helper('ClassVar')}[type[{mesh}]]",
        methods=methods,
        doc=b.doc(where) or f"Actor interface {name}: subclass it and implement every endpoint.",
        mesh_doc=f"A mesh of {name} actors; each endpoint attribute offers the adverbs.",
    )


def _inherited_names(
    b: _Builder,
    iid: int,
    out: dict[str, tuple[int, int, str]],
    iname: str,
    where: tuple[str, ...],
) -> None:
    """Python name -> ``(interface id, ordinal, wire name)`` of every endpoint ``iid`` has,
    its own and its bases'.

    Raises:
        SchemaError: two bases have different endpoints of one Python name (``extends(A, B)``
            with ``A.reset`` and ``B.reset``): the mesh and the actor class would have one
            attribute for both. One endpoint reached twice (a diamond) is not a clash.
    """
    node = b.nodes[iid]
    for i, m in enumerate(node["interface"].get("methods") or []):
        py = member_name(m["name"], RESERVED_MESH)
        prev = out.get(py)
        if prev is not None and prev[:2] != (iid, i):
            first = ".".join(b.schema_path(prev[0]))
            here = ".".join(b.schema_path(iid))
            raise b.error(
                where,
                f"name clash in the bases of {iname}: endpoints {first}.{prev[2]} and "
                f"{here}.{m['name']} both become {py!r} (rename one of them)",
            )
        out[py] = (iid, i, m["name"])
    for sup in node["interface"].get("superclasses") or []:
        _inherited_names(b, sup["id"], out, iname, where)


def method(
    b: _Builder,
    iid: int,
    index: int,
    m: dict[str, Any],
    where: tuple[str, ...],
    iname: str,
    taken: dict[str, str],
) -> ir.Method:
    from .build import ANN_ERP, ANN_RREF, ANN_STREAM

    if m.get("implicitParameters"):
        raise b.error(where, "generic methods are not supported")
    anns = {a["id"] for a in m.get("annotations") or []}
    stream, rref, erp = ANN_STREAM in anns, ANN_RREF in anns, ANN_ERP in anns
    if stream and rref:
        raise b.error(where, "$stream and $rref cannot be combined on one endpoint")
    py = member_name(m["name"], RESERVED_MESH)
    spec = f"_{upper_snake(iname)}_{upper_snake(m['name'])}"
    _claim(b, taken, spec, f"{iname}.{m['name']}", where)
    pnode = b.nodes[m["paramStructType"]]
    rnode = b.nodes[m["resultStructType"]]
    implicit_params = pnode["scopeId"] == 0
    base = iname + m["name"][:1].upper() + m["name"][1:]
    no_params = implicit_params and not (pnode["struct"].get("fields") or [])
    if no_params:
        pclass = "None"  # the codec sends the empty struct: no class per method
    elif implicit_params:
        pclass = "_" + base + "Params"
        _claim(b, taken, pclass, f"{iname}.{m['name']}", where)
        b.internal.append(
            b.struct(
                m["paramStructType"],
                name=pclass,
                doc=f"Parameters of {iname}.{m['name']}.",
                required=True,
            )
        )
    else:
        pclass = b.ref(m["paramStructType"])
    # a named (possibly generic) params struct: its parameters' types are the brand's bindings
    b.subst = b.bindings(m.get("paramBrand"), where)
    try:
        pfields = b.fields(pnode, where, required=implicit_params, method=True)
    finally:
        b.subst = {}
    star = next(
        (
            i
            for i, f in enumerate(pfields)
            if f.init_default is None and any(g.init_default is not None for g in pfields[:i])
        ),
        -1,
    )
    params = [
        ir.Param(
            name=f.name,
            annotation=f.annotation,
            call_annotation=f.init_annotation.removesuffix(" | None")
            if f.init_default is None
            else f.init_annotation,
            default=f.init_default,
            keyword_only=i == star,
        )
        for i, f in enumerate(pfields)
    ]
    rfields = b.fields(rnode, where, method=True)
    if rnode["scopeId"] != 0:
        # a named struct as the direct result: generic ones keep their type arguments
        rclass, kind = b.ref(m["resultStructType"]), "struct"
        brand = {"typeId": m["resultStructType"], "brand": m.get("resultBrand")}
        result = b.map_struct(brand, where, rnode, True).attr
    else:
        if len(rfields) >= 2:
            rclass = base + "Result"
            kind = "struct"
            result = rclass
            _claim(b, taken, rclass, f"{iname}.{m['name']}", where)
            b.internal.append(
                b.struct(m["resultStructType"], name=rclass, doc=f"Results of {iname}.{m['name']}.")
            )
        elif rfields:
            rclass = "_" + base + "Results"
            _claim(b, taken, rclass, f"{iname}.{m['name']}", where)
            b.internal.append(
                b.struct(m["resultStructType"], name=rclass, doc=f"Results of {iname}.{m['name']}.")
            )
            kind = "single"
            result = rfields[0].annotation
        else:
            rclass, kind, result = "None", "none", "None"  # the empty struct, as for params
    if rref and not (kind == "single" and rfields[0].expr in ("Tensor", "TensorData")):
        raise b.error(where, "$rref needs exactly one result, an M.Tensor")
    if stream:
        impl_return = f"{b.helper('Iterator')}[{result}] | {b.helper('AsyncIterator')}[{result}]"
    elif erp:
        impl_return = f"None | {b.helper('Awaitable')}[None]"
    else:
        impl_return = f"{result} | {b.helper('Awaitable')}[{result}]"
    opts = b.loaded.endpoint_options.get(f"{iid}/{index}", {})
    timeout = float(opts.get("timeoutS") or 0.0)
    return ir.Method(
        name=py,
        wire=m["name"],
        interface_id=hex(iid),
        ordinal=index,
        spec=spec,
        params=params,
        result=result,
        params_class=pclass,
        results_class=rclass,
        result_kind=kind,
        impl_return=impl_return,
        port=f"stubs.Port[{result}]" if erp else "",
        stream=stream,
        rref=rref,
        remote="stubs.remote_rref" if rref else "stubs.remote",
        timeout_s=repr(timeout) if timeout > 0 else "None",
        concurrent=bool(opts.get("concurrent")),
        doc=b.doc(where) or f"Endpoint {m['name']} of {iname}.",
    )
