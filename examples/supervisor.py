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
        self.failures: list[str] = []

    def __supervise__(self, failure: MeshFailure) -> bool:
        self.failures.append(str(failure))
        return True  # handled here: do not propagate to the client

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
        children = procs.spawn("workers", Child)
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
        deadline = time.monotonic() + 10
        while not self.failures and time.monotonic() < deadline:
            time.sleep(0.01)  # __supervise__ runs between messages: not while this one runs
        return []

    @endpoint
    def failures_seen(self) -> list[str]:
        return list(self.failures)


def main() -> int:
    parser = argparse.ArgumentParser(description="A supervisor of failing child meshes.")
    parser.add_argument("--supervise", action="store_true", help="(default; kept for compatibility)")
    parser.parse_args()

    scenarios = ["handled_error", "crash_and_respawn", "fire_and_forget_failure"]
    procs = this_host().spawn_procs(per_host={"gpus": 1})
    ok = True
    try:
        supervisor = procs.spawn("supervisor", Supervisor)
        for name in scenarios:
            try:
                lines = getattr(supervisor, name).call_one().get(timeout=90)
            except Exception as exc:
                ok = False
                lines = [f"FAILED: {type(exc).__name__}: {exc}"]
            for line in lines:
                print(f"{name}: {line}")
        deadline = time.monotonic() + 10
        seen: list[str] = []
        while ok and not seen and time.monotonic() < deadline:
            seen = supervisor.failures_seen.call_one().get(timeout=30)
            time.sleep(0.05)
        for failure in seen:
            print(f"__supervise__ got: {failure.splitlines()[0]}")
        ok = ok and bool(seen)
    finally:
        procs.stop().get(30)
    print(f"supervisor: {'ok' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
