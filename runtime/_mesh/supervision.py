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
whose default prints one readable report and exits the client with status 1. Failures are
rank-scoped: calls to ranks that did not fail keep working.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
from dataclasses import dataclass, field
from typing import Any

from .._core.failure import MeshFailure
from .._transport.frame import Envelope
from .._transport.pickle_codec import dumps, loads

__all__ = ["OwnedMesh", "Supervisor", "default_unhandled_fault_hook"]

log = logging.getLogger("monarch.supervision")


def default_unhandled_fault_hook(failure: MeshFailure) -> None:
    """Print a readable report of ``failure`` to stderr and exit the client with status 1.

    Runs in the client on its runtime thread; the exit happens on a separate thread after the
    client's procs have been stopped, so nothing is left behind.
    """
    sys.stderr.write("\n*** monarch: unhandled actor failure ***\n" + failure.report() + "\n")
    sys.stderr.flush()

    def leave() -> None:
        from .runtime import get_runtime

        try:
            get_runtime().shutdown(2.0)
        finally:
            os._exit(1)

    threading.Thread(target=leave, name="monarch fault exit", daemon=True).start()


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
    """Per-process supervision state (see the module docstring)."""

    def __init__(self, rt: Any, parent_addr: str | None) -> None:
        self.rt = rt
        self.parent_addr = parent_addr
        self.owned: dict[str, OwnedMesh] = {}
        self.owned_procs: dict[int, list[Any]] = {}  # id(owner ActorInstance) -> ProcMeshes
        self.remote_failed: dict[str, dict[int, str]] = {}
        self.expected_exits: set[str] = set()
        self.lock = threading.Lock()
        self.hostname = socket.gethostname()
        rt.router.control["failure"] = self._on_failure_message
        rt.router.on_peer_lost.append(self._peer_lost)

    # -- records ---------------------------------------------------------------------------
    def register(self, mesh_id: str, name: str, addrs: list[str], owner: Any) -> OwnedMesh:
        rec = OwnedMesh(mesh_id, name, tuple(addrs), owner)
        with self.lock:
            self.owned[mesh_id] = rec
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
            return f"actor mesh {ref.name!r} was stopped"
        for r in ranks:
            cause = failed.get(r)
            if cause is not None:
                return f"actor {ref.name}[{r}] failed: {cause}"
        return None

    # -- failures ----------------------------------------------------------------------------
    def _on_failure_message(self, env: Any, bufs: list[memoryview]) -> None:
        failure: MeshFailure = loads(env.payload, bufs)
        self.deliver(env.actor, failure)

    def _peer_lost(self, addr: str, reason: str) -> None:
        """A proc died: every owned mesh with ranks there has failed (rank-scoped)."""
        pid = 0
        child = self.rt.children.get(addr)
        if child is not None:
            pid = child.pid
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
                cause=reason,
                host=self.hostname,
                pid=pid,
                actor=f"{rec.name}[{ranks[0]}]",
            )
            self.deliver(rec.mesh_id, failure)

    def deliver(self, mesh_id: str, failure: MeshFailure) -> None:
        """Record ``failure`` of an owned mesh and hand it to the mesh's owner (any thread)."""
        rec = self.owned.get(mesh_id)
        if rec is None:
            # not spawned here: a proc with no owning actor; pass it up to our own parent
            self.remote_failed.setdefault(mesh_id, {}).update({r: failure.cause for r in failure.ranks})
            if self.parent_addr:
                self.report(self.parent_addr, mesh_id, failure)
            else:
                self.root_hook(failure)
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
            self.root_hook(failure)

    def root_hook(self, failure: MeshFailure) -> None:
        from .. import actor as public

        hook = getattr(public, "unhandled_fault_hook", default_unhandled_fault_hook)
        try:
            hook(failure)
        except Exception:
            log.exception("unhandled_fault_hook raised")

    def report(self, addr: str, mesh_id: str, failure: MeshFailure) -> None:
        """Send ``failure`` of ``mesh_id`` to the process that owns it."""
        env = Envelope.new_message()
        env.kind = "supervision"
        env.endpoint = "failure"
        env.actor = mesh_id
        payload, bufs = dumps(failure)
        env.payload = payload
        try:
            self.rt.router.send(addr, env, bufs)
        except Exception as exc:
            log.error("cannot report the failure of %s to its owner at %s: %s", failure.actor, addr, exc)

    # -- lifecycle ---------------------------------------------------------------------------
    def expect_exit(self, addrs: list[str]) -> None:
        """These procs are being stopped on purpose: their exit is not a failure."""
        with self.lock:
            self.expected_exits.update(addrs)

    def mark_stopped(self, mesh_id: str) -> None:
        rec = self.owned.get(mesh_id)
        if rec is not None:
            rec.stopped = True

    def owned_by(self, owner: Any) -> tuple[list[OwnedMesh], list[Any]]:
        """The actor meshes and proc meshes ``owner`` spawned and has not stopped."""
        with self.lock:
            meshes = [r for r in self.owned.values() if r.owner is owner and not r.stopped]
            procs = list(self.owned_procs.pop(id(owner), []))
        return meshes, procs

    def stop_owned_by(self, owner: Any, timeout_s: float = 10.0) -> list[Any]:
        """Start stopping everything ``owner`` owns; returns the futures to wait on."""
        meshes, procs = self.owned_by(owner)
        futures = [self.rt.stop_actor_mesh(r.ref) for r in meshes if r.ref is not None]
        futures += [p.stop() for p in procs]
        return futures


def current_owner() -> Any:
    """The ActorInstance running the current handler, or None (client / no actor)."""
    from .context import _current

    ctx = _current.get()
    if ctx is None:
        return None
    return getattr(ctx.actor_instance, "_actor", None)
