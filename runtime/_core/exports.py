"""Public homes of objects defined in private modules.

A class or function defined in ``monarch._mesh.actor_mesh`` but used as ``monarch.actor.ActorMesh``
should say so in tracebacks, reprs, docs and pickles: :func:`publish` sets its ``__module__`` to
the public module that lists it in ``__all__`` (its one home; other public modules may re-export
it with ``import X as X`` without listing it). ``tests/test_exports.py`` checks both rules.
"""

from __future__ import annotations

import types
from collections.abc import Iterable
from typing import Any

__all__ = ["publish"]


def _private(module: str) -> bool:
    return any(part.startswith("_") for part in module.split("."))


def publish(namespace: dict[str, Any], names: Iterable[str], module: str) -> None:
    """Give every class and function in ``names`` defined in a private ``monarch`` module the
    public ``module`` as its ``__module__``.

    Args:
        namespace: the public module's ``globals()``.
        names: its ``__all__``.
        module: its ``__name__``.
    """
    for name in names:
        obj = namespace.get(name)
        if isinstance(obj, type | types.FunctionType):
            home = getattr(obj, "__module__", "") or ""
            if home.startswith("monarch.") and _private(home):
                obj.__module__ = module
