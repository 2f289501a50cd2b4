"""Loading the Cap'n Proto schema a generated module was generated from.

A generated module ``pkg/x.py`` ships its source schema as ``pkg/x.capnp`` and loads it once at
import time with :func:`load_schema`. The ``SchemaParser`` is kept alive for the life of the
process: pycapnp's schema objects point into it, and dropping it is a use-after-free.
"""

from __future__ import annotations

import sys
import threading
from importlib import resources
from pathlib import Path
from typing import Any

import capnp

__all__ = [
    "LoadedSchema",
    "idl_import_path",
    "load_schema",
    "method_modules",
    "standard_import_paths",
]

_LOCK = threading.Lock()
_PARSER: Any = None
_LOADED: dict[tuple[str, str], LoadedSchema] = {}
# node id -> pycapnp struct module, over every schema loaded in this process
_STRUCTS: dict[int, Any] = {}
# (interface id, method ordinal) -> (params module, results module), branded as the method
# declares them: a generic struct as a method's direct params or result is bound there
_METHODS: dict[tuple[int, int], tuple[Any, Any]] = {}


def idl_import_path() -> str:
    """The directory that holds ``monarch/actor.capnp`` (the root for ``/monarch/...`` imports)."""
    return str(resources.files("monarch.idl"))


def standard_import_paths() -> list[str]:
    """Roots for ``/absolute`` imports every schema may use: monarch's own (``/monarch/...``),
    then the one that holds Cap'n Proto's standard schemas (``/capnp/c++.capnp`` and the like:
    pycapnp ships them inside its package), so foreign annotations such as ``$Cxx.namespace``
    resolve and are ignored."""
    out = [idl_import_path()]
    std = Path(capnp.__file__).resolve().parent.parent
    if (std / "capnp" / "c++.capnp").is_file():
        out.append(str(std))
    return out


class LoadedSchema:
    """One loaded schema file and every struct node reachable from it, by id.

    Attributes:
        module: the pycapnp module of the file.
        name: the schema file's name, for messages.
    """

    __slots__ = ("module", "name")

    def __init__(self, module: Any, name: str) -> None:
        self.module = module
        self.name = name
        _index(module)

    def struct_module(self, node_id: int) -> Any:
        """The pycapnp struct module (``new_message``, ``from_bytes``) of a struct node.

        Raises:
            KeyError: no struct with this id was loaded.
        """
        return _STRUCTS[node_id]

    def __repr__(self) -> str:
        return f"<LoadedSchema {self.name!r} structs={len(_STRUCTS)}>"


def struct_module(node_id: int) -> Any:
    """The pycapnp struct module of any loaded struct node (see :meth:`LoadedSchema.struct_module`)."""
    return _STRUCTS[node_id]


def method_modules(interface_id: int, ordinal: int) -> tuple[Any, Any]:
    """The pycapnp struct modules of a method's params and results, with the method's brand
    (``listing @0 () -> Page(Items)`` gets ``Page`` bound to ``Items``).

    Raises:
        KeyError: no loaded schema declares this method.
    """
    return _METHODS[(interface_id, ordinal)]


def _index(module: Any) -> None:
    from capnp.lib.capnp import _StructModule

    def walk_struct(schema: Any, name: str) -> None:
        node_id = schema.node.id
        if node_id in _STRUCTS:
            return
        _STRUCTS[node_id] = _StructModule(schema, name)
        for field in schema.fields_list:
            if field.proto.which() == "group":
                walk_struct(field.schema, field.proto.name)

    def walk(obj: Any) -> None:
        # _nodeSchema, not schema: an enum's enumerants are attributes of its pycapnp class, so
        # an enumerant named `schema` hides that one
        node = obj._nodeSchema.node if hasattr(obj, "_nodeSchema") else obj.schema.node
        kind = node.which()
        if kind == "enum":
            return
        if kind == "struct":
            walk_struct(obj.schema, node.displayName[node.displayNamePrefixLength :])
        elif kind == "interface":
            methods = obj.schema.methods
            for ordinal, m in enumerate(node.interface.methods):
                method = methods[m.name]
                walk_struct(method.param_type, method.param_type.node.displayName)
                walk_struct(method.result_type, method.result_type.node.displayName)
                _METHODS[(node.id, ordinal)] = (
                    _StructModule(method.param_type, m.name + "$Params"),
                    _StructModule(method.result_type, m.name + "$Results"),
                )
        for nested in node.nestedNodes:
            child = getattr(obj, nested.name, None)
            if child is not None and (hasattr(child, "_nodeSchema") or hasattr(child, "schema")):
                walk(child)

    walk(module)


def load_schema(module: str, filename: str) -> LoadedSchema:
    """Load ``filename`` from the folder of a generated module, once per process.

    Args:
        module: the generated module's ``__name__``; its file's folder holds the schema copy
            written by ``monarch-gen``.
        filename: the schema's file name, e.g. ``"example.capnp"``.

    Returns:
        The loaded schema; later calls with the same arguments return the same object.

    Raises:
        monarch._core.errors.SchemaError: the schema file is missing next to the module.
    """
    global _PARSER
    key = (module, filename)
    with _LOCK:
        loaded = _LOADED.get(key)
        if loaded is not None:
            return loaded
        mod_file = getattr(sys.modules.get(module), "__file__", None)
        folder = Path(mod_file).parent if mod_file else Path.cwd()
        path = folder / filename
        if not path.is_file():
            from .._core.errors import SchemaError

            raise SchemaError(str(path), 0, 0, "schema file not found next to its generated module")
        if _PARSER is None:
            _PARSER = capnp.SchemaParser()
        parsed = _PARSER.load(str(path), imports=[*standard_import_paths(), str(folder)])
        loaded = LoadedSchema(parsed, filename)
        _LOADED[key] = loaded
        return loaded
