"""Hot reload in a proc: ``importlib.reload`` of the modules whose files changed, in dependency
order, then the code of live objects is updated in place.

``importlib.reload`` (all Monarch's ``auto_reload`` does) re-executes a module into its own
namespace: new calls through ``module.f`` run the new code, but objects made before keep the
old: an actor already spawned is an instance of the old class, and the runtime holds its bound
endpoint methods. So, as IPython's ``autoreload`` does, every function and class defined in the
module before the reload is updated from its new version: functions get the new ``__code__``,
defaults and attributes (when the closure's free variables still match), classes get their
methods updated the same way and their other attributes set. The module's names then hold the
new objects (new spawns use the new class); old ones, instances included, run the new code.
Endpoints added by the edit are not reachable on actors spawned before it (spawn again).
"""

from __future__ import annotations

import importlib
import os
import sys
import types
from typing import Any

from ._sync_files import _drop_pyc

__all__ = ["reload_files"]


def _update_function(old: Any, new: Any) -> bool:
    if not (isinstance(old, types.FunctionType) and isinstance(new, types.FunctionType)):
        return False
    if len(old.__code__.co_freevars) != len(new.__code__.co_freevars):
        return False
    try:
        old.__code__ = new.__code__
    except ValueError:
        return False
    old.__defaults__ = new.__defaults__
    old.__kwdefaults__ = new.__kwdefaults__
    old.__doc__ = new.__doc__
    old.__annotations__ = new.__annotations__
    inner_old = old.__dict__.get("__wrapped__")
    old.__dict__.update({k: v for k, v in new.__dict__.items() if k != "__wrapped__"})
    if inner_old is not None and "__wrapped__" in new.__dict__:
        _update(inner_old, new.__dict__["__wrapped__"], set())
    return True


_SKIP = frozenset({"__dict__", "__weakref__", "__module__", "__qualname__", "__doc__", "__slots__"})


def _update_class(old: type, new: type, seen: set[int]) -> None:
    for name, new_attr in list(vars(new).items()):
        if name in _SKIP:
            continue
        old_attr = vars(old).get(name)
        if old_attr is not None and _update(old_attr, new_attr, seen):
            continue
        try:
            setattr(old, name, new_attr)
        except (AttributeError, TypeError):
            pass


def _update(old: Any, new: Any, seen: set[int]) -> bool:
    """Make ``old`` behave as ``new`` in place; False when it cannot be (then replace it)."""
    if id(old) in seen:
        return True
    seen.add(id(old))
    if isinstance(old, types.FunctionType):
        return _update_function(old, new)
    if isinstance(old, (classmethod, staticmethod)) and type(old) is type(new):
        return _update_function(old.__func__, new.__func__)
    if isinstance(old, property) and isinstance(new, property):
        return all(
            (a is None and b is None) or _update_function(a, b)
            for a, b in ((old.fget, new.fget), (old.fset, new.fset), (old.fdel, new.fdel))
        )
    method = getattr(old, "_method", None)  # an @endpoint (EndpointProperty) wraps its function
    if isinstance(method, types.FunctionType) and type(old) is type(new):
        return _update_function(method, new._method)
    if isinstance(old, type) and isinstance(new, type) and old.__qualname__ == new.__qualname__:
        _update_class(old, new, seen)
        return True
    return False


def _order(mods: list[types.ModuleType]) -> list[types.ModuleType]:
    """Dependencies first: a module that holds another changed module, or objects defined in
    it, is reloaded after it (a cycle keeps the given order)."""
    names = {m.__name__ for m in mods}
    deps: dict[str, set[str]] = {}
    for m in mods:
        d: set[str] = set()
        for v in list(vars(m).values()):
            owner = (
                v.__name__ if isinstance(v, types.ModuleType) else getattr(v, "__module__", None)
            )
            if isinstance(owner, str) and owner in names and owner != m.__name__:
                d.add(owner)
        deps[m.__name__] = d
    out: list[types.ModuleType] = []
    done: set[str] = set()
    by_name = {m.__name__: m for m in mods}

    def visit(n: str, stack: set[str]) -> None:
        if n in done or n in stack:
            return
        stack.add(n)
        for dep in sorted(deps[n]):
            visit(dep, stack)
        stack.discard(n)
        done.add(n)
        out.append(by_name[n])

    for m in mods:
        visit(m.__name__, set())
    return out


def reload_files(paths: set[str]) -> list[str]:
    """Reload every loaded module whose file is one of ``paths`` (real paths), dependencies
    first, and update its old functions and classes in place (see the module docstring).

    Returns:
        The reloaded modules' names, in reload order.

    Raises:
        Exception: whatever a module raises while it re-executes (the modules before it are
            reloaded; it and those after it keep their old code).
    """
    real = {os.path.realpath(p) for p in paths}
    mods = []
    for name, m in list(sys.modules.items()):
        f = getattr(m, "__file__", None)
        if name == "__main__" or not isinstance(f, str) or not isinstance(m, types.ModuleType):
            continue
        if os.path.realpath(f) in real:
            mods.append(m)
    done: list[str] = []
    for m in _order(mods):
        old_ns = dict(vars(m))
        f = getattr(m, "__file__", None)
        if isinstance(f, str):
            _drop_pyc(f)
        importlib.reload(m)
        seen: set[int] = set()
        for name, old in old_ns.items():
            new = vars(m).get(name)
            if new is None or new is old:
                continue
            if getattr(old, "__module__", None) != m.__name__:
                continue  # imported from elsewhere: not this module's to update
            _update(old, new, seen)
        done.append(m.__name__)
    return done
