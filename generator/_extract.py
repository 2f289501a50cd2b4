"""The child-process half of loading: parse schemas with pycapnp and print their nodes as JSON.

Run as ``python -m monarch.generator._extract REQUEST_JSON``. A schema error makes pycapnp abort
the interpreter (``terminate called ...``), which is why this runs in its own process; the parent
(:mod:`monarch.generator.load`) turns the child's stderr into a ``SchemaError``.

Output (stdout, one JSON object): ``files`` (requested and imported files: id, path),
``nodes`` (node id -> ``Node.to_dict()``), ``defaults`` (struct id -> field -> default value of
pointer fields with an explicit default), ``consts`` (const id -> value), ``endpoint_options``
(``"<interface id>/<method index>"`` -> the ``$M.endpoint`` options).
"""

from __future__ import annotations

import base64
import json
import os
import re
import sys
from typing import Any

ENDPOINT_ANNOTATION_ID = 0xD86BE546F3196E00
_IMPORT = re.compile(r'\bimport\s+"([^"]+)"')


def _jsonable(v: Any) -> Any:
    if isinstance(v, bool | int | float | str) or v is None:
        return v
    if isinstance(v, bytes | bytearray | memoryview):
        return {"$bytes": base64.b64encode(bytes(v)).decode()}
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_jsonable(x) for x in v]
    raw = getattr(v, "raw", None)
    if isinstance(raw, int):
        return raw
    to_dict = getattr(v, "to_dict", None)
    if to_dict is not None:
        return _jsonable(to_dict())
    try:
        return [_jsonable(x) for x in v]
    except TypeError:
        return None


def _resolve_import(name: str, here: str, imports: list[str]) -> str | None:
    if name.startswith("/"):
        for d in imports:
            p = os.path.join(d, name.lstrip("/"))
            if os.path.isfile(p):
                return p
        return None
    p = os.path.join(os.path.dirname(here), name)
    return p if os.path.isfile(p) else None


def main() -> None:
    import gc

    gc.disable()  # a one-shot process: the GC's rescans of the growing node heap are superlinear
    import capnp

    request = json.loads(sys.argv[1])
    imports: list[str] = request["imports"]
    parser = capnp.SchemaParser()
    out: dict[str, Any] = {
        "files": [],
        "nodes": {},
        "defaults": {},
        "consts": {},
        "endpoint_options": {},
    }
    options_schema = None
    loaded: set[str] = set()
    todo = [(p, True) for p in request["paths"]]
    while todo:
        path, requested = todo.pop(0)
        key = os.path.realpath(path)
        if key in loaded:
            continue
        loaded.add(key)
        module = parser.load(path, imports=imports)
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
        for name in _IMPORT.findall(text):
            target = _resolve_import(name, path, imports)
            if target is not None:
                todo.append((target, False))
        out["files"].append({"id": module.schema.node.id, "path": path, "requested": requested})
        if options_schema is None and "/monarch/actor.capnp" in text:
            actor = _resolve_import("/monarch/actor.capnp", path, imports)
            if actor is not None:
                options_schema = parser.load(actor, imports=imports).EndpointOptions
        _walk(parser, module, out, options_schema)
    # one C-encoded string: json.dump to a stream encodes in pure Python, chunk by chunk
    sys.stdout.write(json.dumps(out, allow_nan=True))


def _walk(parser: Any, module: Any, out: dict[str, Any], options_schema: Any) -> None:
    from capnp.lib.capnp import _StructModule

    def add_struct(schema: Any) -> None:
        node = schema.node
        if str(node.id) in out["nodes"]:
            return
        out["nodes"][str(node.id)] = _jsonable(node.to_dict())
        defaults: dict[str, Any] = {}
        reader = None
        for field in schema.fields_list:
            proto = field.proto
            if proto.which() == "group":
                add_struct(field.schema)  # a generic struct's groups too (they are generic)
            elif (
                not node.isGeneric  # its defaults are read from a message, which needs a brand
                and proto.slot.hadExplicitDefault
                and proto.slot.type.which() in ("list", "struct")
            ):
                if reader is None:
                    smod = _StructModule(schema, "x")
                    reader = smod.from_bytes(smod.new_message().to_bytes()).__enter__()
                defaults[proto.name] = _jsonable(getattr(reader, proto.name))
        if defaults:
            out["defaults"][str(node.id)] = defaults

    def walk(obj: Any, parsed: Any) -> None:
        node = parsed.node
        kind = node.which()
        if kind == "struct":
            add_struct(parsed.as_struct())
        elif kind == "interface":
            out["nodes"][str(node.id)] = _jsonable(node.to_dict())
            schema = parsed.as_interface()
            for i, m in enumerate(node.interface.methods):
                method = schema.methods[m.name]
                add_struct(method.param_type)
                add_struct(method.result_type)
                for ann in m.annotations:
                    if ann.id == ENDPOINT_ANNOTATION_ID and options_schema is not None:
                        opts = ann.value.struct.as_struct(options_schema)
                        out["endpoint_options"][f"{node.id}/{i}"] = _jsonable(opts.to_dict())
        else:
            out["nodes"][str(node.id)] = _jsonable(node.to_dict())
        for nested in node.nestedNodes:
            child_mod = parser.modules_by_id.get(nested.id)
            child_parsed = getattr(child_mod, "_nodeSchema", None)
            if child_parsed is None:
                continue
            child = getattr(obj, nested.name, None)
            if child_parsed.node.which() == "const":
                out["consts"][str(nested.id)] = _jsonable(child)
            walk(child, child_parsed)

    walk(module, parser.modules_by_id[module.schema.node.id]._nodeSchema)


if __name__ == "__main__":
    try:
        main()
    except RecursionError:
        # pycapnp parsed it, but its node tree is too deep to convert (thousands of List(...))
        first = json.loads(sys.argv[1])["paths"][0]
        print(f"{first}:0: failed: types nested too deeply to load", file=sys.stderr)
        sys.exit(1)
