"""Python names for schema names: snake_case members, keyword and builtin escapes."""

from __future__ import annotations

import builtins
import keyword
import re

__all__ = [
    "RESERVED_MESH",
    "RESERVED_STRUCT",
    "constant_name",
    "member_name",
    "pascal",
    "upper_snake",
]

_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
_BUILTINS = frozenset(n for n in dir(builtins) if not n.startswith("_"))
_SOFT = frozenset({"match", "case", "type", "_", "self", "cls", "stubs"})

RESERVED_STRUCT = frozenset({"which", "which_name", "to_bytes", "from_bytes", "from_any"})
"""Attributes of generated structs that fields must not shadow."""

RESERVED_MESH = frozenset(
    {
        "slice", "flatten", "rename", "split", "extent", "size", "stop", "initialized", "name",
        "sizes", "labels", "ndim", "ranks", "shape", "region",
        "logger",  # an attribute of the actor base class (Monarch's Actor.logger)
    }
)  # fmt: skip
"""Mesh operations of generated mesh proxies, and attributes of the actor base class, that
endpoints (methods of both) must not shadow."""


def snake(name: str) -> str:
    """``echoBlob`` -> ``echo_blob``, ``HTTPServer`` -> ``http_server``."""
    return _BOUNDARY.sub("_", name).lower()


def escape(name: str, reserved: frozenset[str] = frozenset()) -> str:
    """Append ``_`` to Python keywords, soft keywords, builtins and ``reserved`` names."""
    if keyword.iskeyword(name) or name in _SOFT or name in _BUILTINS or name in reserved:
        return name + "_"
    return name


def member_name(name: str, reserved: frozenset[str] = frozenset()) -> str:
    """The Python name of a field, method or parameter."""
    return escape(snake(name), reserved)


def pascal(name: str) -> str:
    """``grp`` -> ``Grp``, ``fooBar`` -> ``FooBar`` (group classes)."""
    return escape(name[:1].upper() + name[1:])


def upper_snake(name: str) -> str:
    """``maxItems`` -> ``MAX_ITEMS``."""
    return snake(name).upper()


def constant_name(name: str) -> str:
    """The Python name of a schema constant."""
    return escape(upper_snake(name))
