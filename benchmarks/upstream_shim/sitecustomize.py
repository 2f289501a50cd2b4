"""Import shim for running Monarch's own tests against monarch-idl (a measurement, not a product).

Monarch's tests import some names from torchmonarch's private modules (``monarch._src.*``,
``monarch._rust_bindings.*``, ``monarch.tools.*``). This file, put on ``PYTHONPATH`` by
``benchmarks/upstream_compat.sh``, adds a finder at the END of ``sys.meta_path``: it is only asked
for a module that no real finder provides, so it never shadows a real module (against torchmonarch
it does nothing). It changes import paths only, never behaviour:

* a name in ``PUBLIC`` resolves, on first use, to the object of the same meaning in our public API
  (``monarch.actor`` / ``monarch.config``); where torchmonarch has no public equivalent that is
  the same object, the entry says so. If our public module lacks the name, the name becomes a
  placeholder that raises ``ImportError`` on any use, so only the tests using it fail;
* any other name becomes a placeholder that raises ``NotImplementedError`` on any use (call,
  attribute, instantiation, ``isinstance``). Tests that use such names are excluded from the
  selection (see upstream_compat.py); the placeholders only let their files be collected.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
from typing import Any

PREFIXES = ("monarch._src", "monarch._rust_bindings", "monarch.tools")

# (private module, name) -> our public module. Each is a plain re-export of a public name in
# torchmonarch (checked by `upstream_compat.py --check-shim` against the reference venv), except
# where the comment says otherwise.
PUBLIC: dict[tuple[str, str], str] = {
    ("monarch._src.actor.actor_mesh", "Actor"): "monarch.actor",
    ("monarch._src.actor.actor_mesh", "Channel"): "monarch.actor",
    ("monarch._src.actor.actor_mesh", "Port"): "monarch.actor",
    ("monarch._src.actor.actor_mesh", "ValueMesh"): "monarch.actor",
    ("monarch._src.actor.actor_mesh", "attach"): "monarch.actor",
    ("monarch._src.actor.actor_mesh", "context"): "monarch.actor",
    ("monarch._src.actor.actor_mesh", "current_rank"): "monarch.actor",
    ("monarch._src.actor.bootstrap", "attach_to_workers"): "monarch.actor",
    ("monarch._src.actor.endpoint", "endpoint"): "monarch.actor",
    ("monarch._src.actor.future", "Future"): "monarch.actor",
    ("monarch._src.actor.host_mesh", "HostMesh"): "monarch.actor",
    ("monarch._src.actor.host_mesh", "default_bootstrap_cmd"): "monarch.actor",
    ("monarch._src.actor.host_mesh", "this_host"): "monarch.actor",
    ("monarch._src.actor.host_mesh", "this_proc"): "monarch.actor",
    ("monarch._src.actor.proc_mesh", "ProcMesh"): "monarch.actor",
    ("monarch._src.actor.proc_mesh", "get_or_spawn_controller"): "monarch.actor",
    ("monarch._rust_bindings.monarch_hyperactor.supervision", "MeshFailure"): "monarch.actor",
    ("monarch._rust_bindings.monarch_hyperactor.channel", "ChannelTransport"): "monarch.config",
    ("monarch._rust_bindings.monarch_hyperactor.config", "Encoding"): "monarch.config",
    # Not re-exported by torchmonarch 0.7.0: it is the type of the exception its public calls raise
    # on a failed actor, which Monarch's docs name and our public API exports under this name.
    ("monarch._rust_bindings.monarch_hyperactor.supervision", "SupervisionError"): "monarch.actor",
}


class _Placeholder:
    """Stands for a name with no equivalent here; any use raises ``self._error``."""

    def __init__(self, qualname: str, error: type[Exception], why: str) -> None:
        object.__setattr__(self, "_qualname", qualname)
        object.__setattr__(self, "_error", error)
        object.__setattr__(self, "_why", why)

    def _fail(self, *args: Any, **kwargs: Any) -> Any:
        raise self._error(f"upstream shim: {self._qualname} {self._why}")

    __call__ = _fail
    __getitem__ = _fail
    __iter__ = _fail
    __enter__ = _fail
    __instancecheck__ = _fail
    __subclasscheck__ = _fail

    def __mro_entries__(self, bases: tuple[Any, ...]) -> tuple[type, ...]:
        # a module that subclasses a private name still imports; making an instance raises
        fail = self._fail

        class Unavailable:
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                fail()

        Unavailable.__qualname__ = Unavailable.__name__ = f"Unavailable[{self._qualname}]"
        return (Unavailable,)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        self._fail()

    def __bool__(self) -> bool:
        self._fail()
        return False

    def __repr__(self) -> str:
        return f"<upstream shim placeholder {self._qualname}>"


class _ShimModule(types.ModuleType):
    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        qual = f"{self.__name__}.{name}"
        target = PUBLIC.get((self.__name__, name))
        value: Any
        if target is not None:
            public = importlib.import_module(target)
            if hasattr(public, name):
                value = getattr(public, name)
            else:
                value = _Placeholder(qual, ImportError, f"maps to {target}.{name}, which monarch-idl lacks")
        else:
            value = _Placeholder(qual, NotImplementedError, "is torchmonarch-private; monarch-idl has no equivalent")
        setattr(self, name, value)
        return value


class _ShimFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if not fullname.startswith(PREFIXES):
            return None
        return importlib.machinery.ModuleSpec(fullname, self, is_package=True)

    def create_module(self, spec: Any) -> types.ModuleType:
        module = _ShimModule(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        return None


sys.meta_path.append(_ShimFinder())
