"""The process's runtime slot: the one global of the runtime, read only by user-facing objects.

Below the user-facing objects (``ActorMesh``, ``ProcMesh``, ``HostMesh``, ``Port``, ``Channel``,
``context()``) every collaborator is passed by constructor from :mod:`monarch._mesh.runtime`, the
composition root. The objects users hold can be unpickled in any process, so they find that
process's runtime here. ``tests/test_layering.py`` checks that no other module imports this one.

In a proc the slot is filled by ``proc_main`` before its event loop starts; in the client it is
filled on first use by the starter that :mod:`monarch._mesh.runtime` installs when imported. The
client imports that composition root here, on first use, not at ``import monarch.actor``: its
imports (sockets, the fork-server client, hashing) cost ~10 ms that a program which never
spawns should not pay.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .runtime import Runtime

__all__ = ["current_runtime", "install", "install_starter", "installed"]

_runtime: Runtime | None = None
_starter: Callable[[], Runtime] | None = None
_lock = threading.Lock()


def current_runtime() -> Runtime:
    """This process's runtime; in the client it is started (with its loop thread) on first use.

    Raises:
        SupervisionError: the client runtime did not start.
    """
    rt = _runtime
    if rt is not None:
        return rt
    return _start()


def _start() -> Runtime:
    global _runtime
    with _lock:
        if _runtime is None:
            if _starter is None:
                from . import runtime  # the composition root: its import installs the starter

                del runtime
            assert _starter is not None, "monarch._mesh.runtime installs the client starter"
            _runtime = _starter()
        return _runtime


def installed() -> Runtime | None:
    """The runtime if one was started in this process, else None (starts nothing)."""
    return _runtime


def install(rt: Runtime) -> None:
    """Make ``rt`` this process's runtime (``proc_main``; tests with an in-memory transport)."""
    global _runtime
    with _lock:
        _runtime = rt


def install_starter(starter: Callable[[], Runtime]) -> None:
    """Set how the client's runtime is started on first use (called by the composition root)."""
    global _starter
    _starter = starter
