"""The Monarch actor API (``from monarch.actor import Actor, endpoint, this_host``).

API-compatible with Meta Monarch's ``monarch.actor``; every public name is exported here,
including ``ActorMesh`` and ``SupervisionError`` (which Monarch keeps in private modules).
Multi-host: ``run_worker_loop_forever``/``start_worker_loop_forever`` serve a machine as a host
agent, ``attach_to_workers``/``hosts_from_config`` attach to agents, ``enable_transport`` picks
where the client listens. ``attach``, ``default_bootstrap_cmd``, ``debug_controller``,
``get_meter``, ``ProcId``, ``Uid`` import but raise ``NotImplementedError`` when used; ``span``
and ``traced`` are no-op tracing shims. ``config`` (the :mod:`monarch.config` module) and
``ChannelTransport`` (whose home is :mod:`monarch.config`) load on first access, so importing
this module stays light.
"""

from __future__ import annotations

import importlib
import sys
import types
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from ._core.errors import ActorError, CallTimeout, MonarchError, SupervisionError
from ._core.exports import publish
from ._core.failure import MeshFailure
from ._core.future import Future
from ._core.shape import Extent, Point, Shape
from ._core.value_mesh import ValueMesh
from ._mesh.actor import Actor
from ._mesh.actor_mesh import ActorMesh
from ._mesh.bootstrap import run_worker_loop_forever, start_worker_loop_forever
from ._mesh.context import (
    Context,
    Instance,
    context,
    current_actor_name,
    current_rank,
    current_size,
)
from ._mesh.controller import get_or_spawn_controller
from ._mesh.endpoint import Endpoint, EndpointProperty, concurrent_endpoint, endpoint
from ._mesh.port import Channel, Port, PortReceiver
from ._mesh.proc_mesh import HostMesh, ProcMesh, this_host, this_proc
from ._mesh.session import attach_to_workers, enable_transport, hosts_from_config, shutdown_context
from ._mesh.stream import Stream
from ._mesh.supervision import default_unhandled_fault_hook, fault_hooks
from ._mesh.unbuilt import (
    ProcId,
    Uid,
    attach,
    debug_controller,
    default_bootstrap_cmd,
    get_meter,
    span,
    traced,
)

if TYPE_CHECKING:  # at run time both load on first access (see __getattr__ below)
    from . import config
    from .config import ChannelTransport  # noqa: F401  # re-exported lazily; its home is monarch.config

__all__ = [
    "Accumulator",
    "Actor",
    "ActorError",
    "ActorMesh",
    "CallTimeout",
    "Channel",
    "Context",
    "Endpoint",
    "EndpointProperty",
    "Extent",
    "Future",
    "HostMesh",
    "Instance",
    "MeshFailure",
    "MonarchError",
    "Point",
    "Port",
    "PortReceiver",
    "ProcId",
    "ProcMesh",
    "Shape",
    "Stream",
    "SupervisionError",
    "Uid",
    "ValueMesh",
    "as_endpoint",
    "attach",
    "attach_to_workers",
    "concurrent_endpoint",
    "config",
    "context",
    "current_actor_name",
    "current_rank",
    "current_size",
    "debug_controller",
    "default_bootstrap_cmd",
    "default_unhandled_fault_hook",
    "enable_transport",
    "endpoint",
    "get_meter",
    "get_or_spawn_controller",
    "hosts_from_config",
    "run_worker_loop_forever",
    "send",
    "shutdown_context",
    "span",
    "start_worker_loop_forever",
    "this_host",
    "this_proc",
    "traced",
    "unhandled_fault_hook",
]

A = TypeVar("A")
R = TypeVar("R")

unhandled_fault_hook: Callable[[MeshFailure], None]
"""Called in the client (on its runtime thread) with every failure that no ``__supervise__``
handled. Replaceable: ``monarch.actor.unhandled_fault_hook = my_hook``. The default prints a
report and raises ``SystemExit(1)``; a hook that raises ``SystemExit(n)`` makes the runtime stop
every proc and exit the client with status ``n``."""


class _ActorModule(types.ModuleType):
    """Makes ``unhandled_fault_hook`` a module attribute that reads and writes the supervision
    layer's hook slot, so assigning it (Monarch's way of installing a hook) takes effect."""

    @property
    def unhandled_fault_hook(self) -> Callable[[MeshFailure], None]:
        return fault_hooks.unhandled

    @unhandled_fault_hook.setter
    def unhandled_fault_hook(self, hook: Callable[[MeshFailure], None]) -> None:
        if not callable(hook):
            raise TypeError(f"unhandled_fault_hook must be callable, got {hook!r}")
        fault_hooks.unhandled = hook

    def __reduce__(self) -> tuple[Any, ...]:
        # pickled by name like any module (cloudpickle meets it in functions' globals)
        return (importlib.import_module, (self.__name__,))


sys.modules[__name__].__class__ = _ActorModule

# names that live in monarch.config, which imports pydantic-settings: loaded on first access
_LAZY = {"config": "", "ChannelTransport": "ChannelTransport"}


def __getattr__(name: str) -> Any:
    """``config`` (the :mod:`monarch.config` module) and ``ChannelTransport``, imported on first use."""
    attr = _LAZY.get(name)
    if attr is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    module = importlib.import_module("monarch.config")
    value = getattr(module, attr) if attr else module
    globals()[name] = value
    return value


class Accumulator(Generic[A, R]):
    """Call an endpoint on every actor and fold the results (Monarch's ``Accumulator``).

    Args:
        endpoint: an endpoint of a mesh, e.g. ``mesh.value``.
        identity: the initial accumulated value.
        combine: ``combine(acc, value) -> acc``, applied in rank order.
    """

    def __init__(self, endpoint: Endpoint[..., R], identity: A, combine: Callable[[A, R], A]) -> None:
        self._endpoint = endpoint
        self._identity = identity
        self._combine = combine

    def accumulate(self, *args: Any, **kwargs: Any) -> Future[A]:
        """Call every actor (through ``endpoint.stream``) and return a future of the fold.

        As Monarch's: the calls are sent now; the results are folded with ``combine`` in arrival
        order, starting from ``identity``, when the future is awaited or ``get()`` is called.

        Raises (from the future):
            ActorError: an actor's endpoint raised.
            SupervisionError: an actor failed or its proc died.
        """
        results = self._endpoint.stream(*args, **kwargs)

        async def fold() -> A:
            acc = self._identity
            for f in results:
                acc = self._combine(acc, await f)
            return acc

        return Future._from_coro(fold())


def send(
    endpoint: Endpoint[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    port: Port[Any] | None = None,
    selection: str = "all",
) -> None:
    """Low-level send (Monarch's ``send``): cast to the endpoint's mesh; each result goes to
    ``port`` when given.

    Args:
        selection: ``"all"`` every actor, ``"choose"`` one actor.

    Raises:
        ValueError: unknown selection.
    """
    if selection not in ("all", "choose"):
        raise ValueError(f"selection must be 'all' or 'choose', got {selection!r}")
    mesh = endpoint._mesh
    if selection == "choose":
        fut = endpoint.choose(*args, **kwargs)
        if port is not None:
            fut.add_done_callback(lambda f: _to_port(port, f))
        return
    if port is None:
        endpoint.broadcast(*args, **kwargs)
        return
    for fut in [endpoint.call_one(*args, **kwargs)] if len(mesh) == 1 else []:
        fut.add_done_callback(lambda f: _to_port(port, f))
    if len(mesh) != 1:
        endpoint.call(*args, **kwargs).add_done_callback(lambda f: _mesh_to_port(port, f))


def _to_port(port: Port[Any], f: Future[Any]) -> None:
    exc = f.exception(0)
    if exc is not None:
        port.exception(exc if isinstance(exc, Exception) else RuntimeError(str(exc)))
    else:
        port.send(f.get(0))


def _mesh_to_port(port: Port[Any], f: Future[ValueMesh[Any]]) -> None:
    exc = f.exception(0)
    if exc is not None:
        port.exception(exc if isinstance(exc, Exception) else RuntimeError(str(exc)))
        return
    for v in f.get(0).values():
        port.send(v)


def as_endpoint(not_an_endpoint: Any, *, explicit_response_port: bool = False) -> Endpoint[..., Any]:
    """Turn a plain (non-endpoint) method of a mesh into an endpoint (Monarch's ``as_endpoint``).

    Raises:
        TypeError: the argument is not a mesh method.
    """
    from ._mesh.endpoint import EndpointSpec

    if isinstance(not_an_endpoint, Endpoint):
        return not_an_endpoint
    mesh = getattr(not_an_endpoint, "_mesh", None)
    name = getattr(not_an_endpoint, "_name", None)
    if mesh is None or name is None:
        raise TypeError(f"as_endpoint() takes a method of an actor mesh, got {not_an_endpoint!r}")
    spec = EndpointSpec(name=name, py_name=name, explicit_response_port=explicit_response_port)
    return Endpoint(mesh, spec)


publish(globals(), [n for n in __all__ if n not in ("unhandled_fault_hook", "config")], __name__)
