"""Controllers: one actor per name in the whole job, hosted by the root client.

Semantics follow Monarch's ``get_or_spawn_controller(name, Class, *args, **kwargs)``: the first
call with a name spawns ``Class(*args, **kwargs)`` as a one-actor mesh in the root client's
process; every later call with that name, from the client, from any actor in any proc, or through
a proc mesh unpickled elsewhere, gets that same actor. Calls from procs travel to the root as a
control message (``ControlOp.CONTROLLER``); concurrent first calls spawn one actor.
"""

from __future__ import annotations

import threading
from typing import Any

import cloudpickle

from .._core.future import Future
from .._transport.messages import ControlOp
from .._transport.pickle_codec import PICKLE_CODEC, dumps, loads
from .current import current_runtime
from .sinks import OneSink
from .wire_errors import encode_error

__all__ = ["ControllerRegistry", "get_or_spawn_controller"]


class ControllerRegistry:
    """The root client's table of controllers (name -> one-actor mesh).

    Args:
        spawn: spawns ``cls(*args, **kwargs)`` as a one-actor mesh in this process.
    """

    def __init__(self, spawn: Any) -> None:
        self._spawn = spawn
        self._meshes: dict[str, Any] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<ControllerRegistry {sorted(self._meshes)}>"

    def get_or_spawn(self, name: str, cls: type, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """The controller named ``name``, spawned on first request (any thread).

        Raises:
            TypeError: ``cls`` is not a spawnable actor class.
        """
        with self._lock:
            mesh = self._meshes.get(name)
            if mesh is None:
                mesh = self._meshes[name] = self._spawn(name, cls, *args, **kwargs)
            return mesh


def get_or_spawn_controller(name: str, cls: type, *args: Any, **kwargs: Any) -> Future[Any]:
    """The job-wide controller actor named ``name``, spawned on first use (Monarch's
    ``get_or_spawn_controller``).

    Args:
        name: the controller's name, unique in the job.
        cls: its actor class (used only by the call that spawns it).
        *args, **kwargs: passed to ``cls`` by the call that spawns it (pickled).

    Returns:
        A future of the one-actor mesh (an ``ActorMesh``, or the generated mesh proxy).

    Raises:
        TypeError: ``name`` is not a str (at once), or ``cls`` is not an actor class (in the
            future).
        SupervisionError: the root client cannot be reached (in the future).
    """
    if not isinstance(name, str):
        raise TypeError(f"get_or_spawn_controller(name, ...): name must be a str, got {type(name).__name__}")
    rt = current_runtime()
    if rt.controllers is not None:
        try:
            return Future.completed(rt.controllers.get_or_spawn(name, cls, args, kwargs))
        except Exception as exc:
            failed: Future[Any] = Future()
            failed.set_exception(exc)
            return failed
    sink = OneSink(rt.router, PICKLE_CODEC, {rt.root_addr: {0}})
    payload = cloudpickle.dumps((name, cls, args, kwargs), protocol=5)
    rt.router.send_control(rt.root_addr, ControlOp.CONTROLLER, payload=payload, reply_port=sink.port, sequenced=False)
    return sink.future


def serve_controller_requests(rt: Any) -> None:
    """Answer ``ControlOp.CONTROLLER`` requests in the root client (called by the runtime)."""
    host = rt.host

    def on_request(env: Any, bufs: list[memoryview]) -> None:
        reply_addr, reply_port = env.replyAddr, env.replyPort
        try:
            name, cls, args, kwargs = loads(env.payload, bufs)
            mesh = rt.controllers.get_or_spawn(name, cls, tuple(args), dict(kwargs))
            payload, out = dumps(mesh)
            err = False
        except Exception as exc:
            payload, out = encode_error(exc, "controller")
            err = True
        if reply_addr:
            host.send_part(reply_addr, reply_port, 0, err, payload, out, True)

    rt.router.handle_control(ControlOp.CONTROLLER, on_request)
