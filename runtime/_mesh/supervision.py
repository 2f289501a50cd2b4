"""Supervision: the ownership tree, failure delivery to owners, and the root's fault hook.

Semantics follow Meta Monarch's supervision model (Erlang/OTP ownership tree). Every actor mesh
is owned by the actor (or the client) that spawned it, and the owner's process keeps a record of
it here. A failure of any of its ranks — an actor failing, or its proc dying — becomes a
:class:`MeshFailure` that is delivered to the owning actor's ``__supervise__`` (through its
mailbox, on its own thread or loop, in order with its messages):

- ``True``: handled; the owner keeps running, the failed ranks stay failed.
- ``False``/``None``: the owner fails too and the failure, chained, goes to *its* owner.
- raising: the owner fails with the new exception; the original failure is chained.

At the root (the client) an unhandled failure goes to ``monarch.actor.unhandled_fault_hook``,
whose default prints one readable report and raises ``SystemExit(1)``: the runtime then stops
every proc and exits the client with that status. Failures are rank-scoped: calls to ranks that
did not fail keep working.
"""

from __future__ import annotations

import collections
import logging
import socket
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .._core.errors import SupervisionError
from .._core.failure import MeshFailure
from .._core.shape import Point
from .._transport.messages import ControlOp, Kind
from .._transport.pickle_codec import dumps, loads
from .context import _current
from .router import Router

__all__ = ["FaultHooks", "OwnedMesh", "Supervisor", "current_owner", "default_unhandled_fault_hook", "fault_hooks"]

log = logging.getLogger("monarch.supervision")

# stopped meshes (and failures of meshes owned elsewhere) remembered to refuse calls with their
# cause; older records are forgotten (a call to them then fails when it reaches the proc)
_STOPPED_KEPT = 4096
# procs whose exit is expected (being stopped) remembered at most; an older one that exits
# later is reported as failed
_EXPECTED_KEPT = 4096


def default_unhandled_fault_hook(failure: MeshFailure) -> None:
    """Print a readable report of ``failure`` to stderr and raise ``SystemExit(1)``.

    Runs in the client on its runtime thread. The runtime turns the ``SystemExit`` into
    stopping every proc and exiting the client with its status (also when ``main()`` is
    already returning), so nothing is left behind.
    """
    sys.stderr.write("\n*** monarch: unhandled actor failure ***\n" + failure.report() + "\n")
    sys.stderr.flush()
    raise SystemExit(1)


class FaultHooks:
    """Where ``monarch.actor.unhandled_fault_hook`` is kept (that module attribute reads and
    writes :attr:`unhandled` here)."""

    def __init__(self) -> None:
        self.unhandled: Callable[[MeshFailure], None] = default_unhandled_fault_hook


fault_hooks = FaultHooks()


@dataclass
class OwnedMesh:
    """The owner's record of one actor mesh it spawned."""

    mesh_id: str
    name: str
    addrs: tuple[str, ...]
    owner: Any  # the owning ActorInstance, or None for the process itself (the client)
    ref: Any = None
    failed: dict[int, str] = field(default_factory=dict)
    stopped: bool = False


class Supervisor:
    """Per-process supervision state (see the module docstring).

    Args:
        router: this process's router (failure reports travel through it; peer loss comes from it).
        parent_addr: where failures with no local owner go (a proc's owner); None at the root.
        pid_of: the pid of a child proc by address (for reports).
        on_unhandled: at the root, called with a failure nobody handled.
        stop_mesh: stops an actor mesh by its ``MeshRef`` (returns a Future).
    """

    def __init__(
        self,
        router: Router,
        *,
        parent_addr: str | None,
        pid_of: Callable[[str], int],
        on_unhandled: Callable[[MeshFailure], None],
        stop_mesh: Callable[[Any], Any],
    ) -> None:
        self.router = router
        self.parent_addr = parent_addr
        self._pid_of = pid_of
        self._on_unhandled = on_unhandled
        self._stop_mesh = stop_mesh
        self.owned: dict[str, OwnedMesh] = {}
        self.owned_procs: dict[int, list[Any]] = {}  # id(owner ActorInstance) -> ProcMeshes
        self.remote_failed: dict[str, dict[int, str]] = {}
        self._stopped_order: collections.deque[str] = collections.deque()
        # procs being stopped on purpose, oldest first; an entry whose proc was dead already
        # is never removed by its exit, so at most _EXPECTED_KEPT are kept (a long-lived client)
        self.expected_exits: dict[str, None] = {}
        self.lock = threading.Lock()
        self.hostname = socket.gethostname()
        # where a proc of another host runs: (host name, pid), or None for this host's (set by
        # the runtime to its remote hosts' lookup)
        self.where_of: Callable[[str], tuple[str, int] | None] = lambda addr: None
        router.handle_control(ControlOp.FAILURE, self._on_failure_message)
        router.on_peer_lost(self._peer_lost)

    def __repr__(self) -> str:
        failed = sum(1 for r in self.owned.values() if r.failed)
        return f"<Supervisor owned={len(self.owned)} failed={failed} parent={self.parent_addr!r}>"

    # -- records ---------------------------------------------------------------------------
    def register(self, ref: Any, owner: Any) -> OwnedMesh:
        """Record that ``owner`` (an ActorInstance, or None for this process) spawned ``ref``."""
        rec = OwnedMesh(ref.mesh_id, ref.name, tuple(ref.addrs), owner, ref)
        with self.lock:
            self.owned[ref.mesh_id] = rec
        return rec

    def register_procs(self, owner: Any, proc_mesh: Any) -> None:
        if owner is not None:
            with self.lock:
                self.owned_procs.setdefault(id(owner), []).append(proc_mesh)

    def unusable(self, ref: Any, ranks: list[int]) -> str | None:
        """Why calls to these ranks of ``ref`` cannot be made, or None."""
        rec = self.owned.get(ref.mesh_id)
        failed = rec.failed if rec is not None else self.remote_failed.get(ref.mesh_id, {})
        if rec is not None and rec.stopped:
            return str(SupervisionError.actor_stopped(ref.name, "stopped by client"))
        for r in ranks:
            cause = failed.get(r)
            if cause is not None:
                return str(SupervisionError.actor_failed(f"{ref.name}[{r}]", cause))
        if rec is None:
            # owned elsewhere: a mesh whose owner's process is dead went with its owner (its
            # actors are orphans whose failures nobody could supervise)
            dead = self.router.dead_reason(ref.owner)
            if dead:
                return str(SupervisionError.controller_lost(f"{ref.name}[{ranks[0]}]" if ranks else ref.name, ref.name, ref.owner, dead))
        return None

    # -- failures ----------------------------------------------------------------------------
    def _on_failure_message(self, env: Any, bufs: list[memoryview]) -> None:
        try:
            failure = loads(env.payload, bufs)
        except Exception as exc:
            log.error("undecodable failure report from %s: %s", env.origin, exc)
            return
        if not isinstance(failure, MeshFailure):
            log.error("bad failure report from %s: %r", env.origin, type(failure))
            return
        self.deliver(env.actor, failure)

    def _peer_lost(self, addr: str, reason: str) -> None:
        """A proc died: every owned mesh with ranks there has failed (rank-scoped)."""
        remote = self.where_of(addr)
        host, pid = remote if remote is not None else (self.hostname, self._pid_of(addr))
        stopping = addr in self.expected_exits
        for rec in list(self.owned.values()):
            if rec.stopped:
                continue
            ranks = [r for r, a in enumerate(rec.addrs) if a == addr and r not in rec.failed]
            if not ranks:
                continue
            if stopping:
                # the proc was stopped on purpose: its actors are stopped, not failed
                with self.lock:
                    for r in ranks:
                        rec.failed.setdefault(r, f"its proc was stopped ({reason})")
                continue
            failure = MeshFailure(
                mesh_name=rec.name,
                ranks=ranks,
                cause=f"the process this actor was running on failed: {reason}",
                host=host,
                pid=pid,
                actor=f"{rec.name}[{ranks[0]}]",
                qualified_actor=_qualified(rec, ranks[0]),
            )
            self.deliver(rec.mesh_id, failure)
        with self.lock:
            self.expected_exits.pop(addr, None)

    def deliver(self, mesh_id: str, failure: MeshFailure) -> None:
        """Record ``failure`` of an owned mesh and hand it to the mesh's owner (any thread)."""
        rec = self.owned.get(mesh_id)
        if rec is None:
            # not spawned here: a proc with no owning actor; pass it up to our own parent
            self.remote_failed.setdefault(mesh_id, {}).update({r: failure.cause for r in failure.ranks})
            while len(self.remote_failed) > _STOPPED_KEPT:
                del self.remote_failed[next(iter(self.remote_failed))]
            if self.parent_addr:
                self.report(self.parent_addr, mesh_id, failure)
            else:
                self._on_unhandled(failure)
            return
        with self.lock:
            if rec.stopped:
                return
            for r in failure.ranks:
                rec.failed.setdefault(r, failure.cause)
        owner = rec.owner
        if owner is not None:
            owner.post_supervise(failure)
        elif self.parent_addr:
            self.report(self.parent_addr, mesh_id, failure)
        else:
            self._on_unhandled(failure)

    def report(self, addr: str, mesh_id: str, failure: MeshFailure) -> None:
        """Send ``failure`` of ``mesh_id`` to the process that owns it."""
        payload, bufs = dumps(failure)
        try:
            self.router.send_control(addr, ControlOp.FAILURE, actor=mesh_id, payload=payload, bufs=bufs, kind=Kind.SUPERVISION)
        except Exception as exc:
            log.error("cannot report the failure of %s to its owner at %s: %s", failure.actor, addr, exc)

    # -- lifecycle ---------------------------------------------------------------------------
    def expect_exit(self, addrs: list[str]) -> None:
        """These procs are being stopped on purpose: their exit is not a failure."""
        with self.lock:
            self.expected_exits.update(dict.fromkeys(addrs))
            while len(self.expected_exits) > _EXPECTED_KEPT:
                del self.expected_exits[next(iter(self.expected_exits))]

    def mark_stopped(self, mesh_id: str) -> None:
        """The mesh was stopped on purpose: later calls fail, its end is not a failure."""
        rec = self.owned.get(mesh_id)
        if rec is not None and not rec.stopped:
            rec.stopped = True
            with self.lock:
                self._stopped_order.append(mesh_id)
                while len(self._stopped_order) > _STOPPED_KEPT:
                    self.owned.pop(self._stopped_order.popleft(), None)

    def owned_by(self, owner: Any) -> tuple[list[OwnedMesh], list[Any]]:
        """The actor meshes and proc meshes ``owner`` spawned and has not stopped."""
        with self.lock:
            meshes = [r for r in self.owned.values() if r.owner is owner and not r.stopped]
            procs = list(self.owned_procs.pop(id(owner), []))
        return meshes, procs

    def stop_owned_by(self, owner: Any) -> list[Any]:
        """Start stopping everything ``owner`` owns; returns the futures to wait on."""
        meshes, procs = self.owned_by(owner)
        futures = [self._stop_mesh(r.ref) for r in meshes if r.ref is not None]
        futures += [p.stop() for p in procs]
        return futures


def _qualified(rec: OwnedMesh, rank: int) -> str:
    """Monarch's name of rank ``rank`` of ``rec``: ``<module.Class name{'gpus': 0/4}>``."""
    ref = rec.ref
    cls = getattr(ref, "actor_cls", None)
    shape = getattr(ref, "shape", None)
    point = f"{Point(rank, shape.extent)}" if shape is not None else f"[{rank}]"
    if cls is None:
        return f"{rec.name}{point}"
    return f"<{cls.__module__}.{cls.__qualname__} {rec.name}{point}>"


def current_owner() -> Any:
    """The ActorInstance running the current handler, or None (client / no actor)."""
    ctx = _current.get()
    if ctx is None:
        return None
    return getattr(ctx.actor_instance, "_actor", None)
