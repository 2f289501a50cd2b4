"""A supervisor that owns a failing child mesh and recovers (plain Python actor API).

The client spawns one ``Supervisor`` actor; everything else happens inside its endpoints:

1. ``handled_error``: spawns a child actor on its own proc (``this_proc().spawn``) whose
   endpoint raises; the call raises ``ActorError`` (with the remote traceback) in the supervisor,
   the child survives, and a corrected call succeeds.
2. ``crash_and_respawn``: spawns a child mesh on new procs (``this_host().spawn_procs``); one
   child process dies (``os._exit``) mid-call: the supervisor's call raises ``SupervisionError``
   at once; it stops that mesh, spawns a fresh one and finishes the work there.
3. ``fire_and_forget_failure``: ``broadcast`` to a child endpoint that raises: with no reply
   port the child actor fails and the failure goes to its owner, the supervisor, whose
   ``__supervise__`` records it and returns True (handled: it goes no further up).

``__supervise__`` runs between the supervisor's messages, so a failure cannot reach it while the
endpoint that caused it is still running. After each scenario whose child fails (2 and 3), the
client waits for that child mesh's own failure: ``wait_failure(mesh_name)`` is an
explicit-response-port endpoint that ``__supervise__`` answers when a failure of that mesh
arrives (at once if it already has). The run fails if a failure does not arrive within 30 s,
or if the supervisor saw any failure other than those two.

Run: ``python examples/supervisor.py``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from monarch.actor import (
    Actor,
    ActorError,
    MeshFailure,
    Port,
    SupervisionError,
    context,
    endpoint,
    this_host,
    this_proc,
)


class Child(Actor):
    """Does work; can be made to fail in several ways."""

    @endpoint
    def divide(self, a: float, b: float) -> float:
        return a / b

    @endpoint
    def work(self, crash_rank: int) -> int:
        rank = context().actor_instance.rank.rank
        if rank == crash_rank:
            os._exit(3)  # the whole child process dies: no reply will ever come
        return rank * 10

    @endpoint
    def explode(self) -> None:
        raise RuntimeError("child exploded with nobody waiting for an answer")


class Supervisor(Actor):
    """Owns child meshes and recovers from their failures."""

    def __init__(self) -> None:
        self.failures: list[MeshFailure] = []
        self.waiters: dict[str, list[Port[str]]] = {}

    def __supervise__(self, failure: MeshFailure) -> bool:
        self.failures.append(failure)
        for port in self.waiters.pop(failure.mesh_name, []):
            port.send(_describe(failure))
        return True  # handled here: do not propagate to the client

    @endpoint(explicit_response_port=True)
    def wait_failure(self, port: Port[str], mesh_name: str) -> None:
        """Answer with the first failure of child mesh ``mesh_name`` once it has arrived."""
        for failure in self.failures:
            if failure.mesh_name == mesh_name:
                port.send(_describe(failure))
                return
        self.waiters.setdefault(mesh_name, []).append(port)

    @endpoint
    def handled_error(self) -> list[str]:
        log = []
        child = this_proc().spawn("divider", Child)
        try:
            child.divide.call_one(1.0, 0.0).get(timeout=30)
        except ActorError as exc:
            log.append(f"caught {type(exc).__name__}: {str(exc).splitlines()[0]}")
        log.append(
            f"child still alive, retry gives {child.divide.call_one(1.0, 4.0).get(timeout=30)}"
        )
        return log

    @endpoint
    def crash_and_respawn(self) -> list[str]:
        log = []
        procs = this_host().spawn_procs(per_host={"gpus": 2})
        children = procs.spawn("crashing_workers", Child)
        start = time.perf_counter()
        try:
            children.work.call(crash_rank=1).get(timeout=30)
        except SupervisionError as exc:
            log.append(f"caught SupervisionError after {time.perf_counter() - start:.3f} s: {exc}")
        procs.stop().get(timeout=30)
        procs = this_host().spawn_procs(per_host={"gpus": 2})
        try:
            children = procs.spawn("workers", Child)
            results = children.work.call(crash_rank=-1).get(timeout=30)
            log.append(f"respawned child mesh answered {list(results.values())}")
        finally:
            procs.stop().get(timeout=30)
        return log

    @endpoint
    def fire_and_forget_failure(self) -> list[str]:
        child = this_proc().spawn("exploder", Child)
        child.explode.broadcast()
        # the failure reaches __supervise__ after this endpoint returns: the client waits for it
        return ["broadcast sent; nobody waits for its answer"]

    @endpoint
    def failures_seen(self) -> list[str]:
        return [_describe(f) for f in self.failures]


def _describe(failure: MeshFailure) -> str:
    return f"{failure.mesh_name} ranks {failure.ranks}: {failure.cause}"


def main() -> int:
    parser = argparse.ArgumentParser(description="A supervisor of failing child meshes.")
    parser.add_argument(
        "--supervise", action="store_true", help="(default; kept for compatibility)"
    )
    parser.parse_args()

    # each scenario, and the child mesh whose failure it must cause (None: no failure)
    scenarios = [
        ("handled_error", None),
        ("crash_and_respawn", "crashing_workers"),
        ("fire_and_forget_failure", "exploder"),
    ]
    procs = this_host().spawn_procs(per_host={"gpus": 1})
    ok = True
    try:
        supervisor = procs.spawn("supervisor", Supervisor)
        for name, failing_mesh in scenarios:
            try:
                lines = getattr(supervisor, name).call_one().get(timeout=90)
                if failing_mesh is not None:
                    got = supervisor.wait_failure.call_one(failing_mesh).get(timeout=30)
                    lines.append(f"__supervise__ got: {got}")
            except Exception as exc:
                ok = False
                lines = [f"FAILED: {type(exc).__name__}: {exc}"]
            for line in lines:
                print(f"{name}: {line}")
        seen = supervisor.failures_seen.call_one().get(timeout=30)
        expected = [mesh for _, mesh in scenarios if mesh is not None]
        if [line.split(" ", 1)[0] for line in seen] != expected:
            ok = False
            print(f"FAILED: __supervise__ saw {seen}, expected one failure of each of {expected}")
    finally:
        procs.stop().get(30)
    print(f"supervisor: {'ok' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
