"""Actors for the supervision tests (importable so procs load them by reference)."""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from monarch.actor import Actor, MeshFailure, Port, endpoint, this_host, this_proc


class Worker(Actor):
    def __init__(self, fail_in_init: bool = False) -> None:
        if fail_in_init:
            raise RuntimeError("cannot start: no data")
        self.n = 0

    @endpoint
    def ping(self) -> int:
        self.n += 1
        return os.getpid()

    @endpoint
    def boom(self) -> None:
        raise ValueError("boom in handler")

    @endpoint
    def block(self, seconds: float) -> float:
        time.sleep(seconds)
        return seconds

    @endpoint
    def hold(self, started: Port[int], seconds: float) -> float:
        """Tell ``started`` (with this proc's pid) that the call is running, then block."""
        started.send(os.getpid())
        time.sleep(seconds)  # the long call under test, not a synchronisation
        return seconds

    @endpoint
    def exit_proc(self) -> None:
        sys.exit(3)

    @endpoint(explicit_response_port=True)
    def bad_port(self, port: Port[int]) -> None:
        raise KeyError("no answer")

    @endpoint
    def give_lock(self) -> Any:
        import threading

        return threading.Lock()

    @endpoint
    def stream_boom(self) -> Any:
        yield 1
        raise ValueError("mid-stream")

    @endpoint(timeout=0.3)
    def slow_default(self) -> int:
        time.sleep(2)
        return 1


class Supervisor(Actor):
    """Owns a child mesh; its policy decides what __supervise__ returns.

    ``wait_failure(mesh_name)`` answers, from ``__supervise__``, once a failure of that mesh has
    arrived (at once if it already has): callers wait on that reply, not on a poll.
    """

    def __init__(self, policy: str, where: str = "proc") -> None:
        self.policy = policy
        self.failures: list[MeshFailure] = []
        if where == "proc":
            self.child = this_proc().spawn("child", Worker)
        else:
            self.procs = this_host().spawn_procs(per_host={"gpus": 2})
            self.child = self.procs.spawn("child", Worker)
        self.cleaned = False
        self.waiters: dict[str, list[Port[tuple[str, list[int], str]]]] = {}

    def __supervise__(self, failure: MeshFailure) -> bool:
        self.failures.append(failure)
        for port in self.waiters.pop(failure.mesh_name, []):
            port.send((failure.mesh_name, failure.ranks, failure.cause))
        if self.policy == "raise":
            raise RuntimeError("supervisor gave up")
        return self.policy == "handle"

    @endpoint
    def child_pids(self) -> list[int]:
        return list(self.child.ping.call().get(timeout=10).values())

    @endpoint
    def break_child(self) -> None:
        self.child.slice(**{k: 0 for k in self.child.extent}).boom.broadcast()

    @endpoint(explicit_response_port=True)
    def wait_failure(self, port: Port[tuple[str, list[int], str]], mesh_name: str) -> None:
        for f in self.failures:
            if f.mesh_name == mesh_name:
                port.send((f.mesh_name, f.ranks, f.cause))
                return
        self.waiters.setdefault(mesh_name, []).append(port)

    @endpoint
    def seen(self) -> list[tuple[str, list[int], str]]:
        return [(f.mesh_name, f.ranks, f.cause) for f in self.failures]

    @endpoint
    def alive(self) -> bool:
        return True


class Cleaner(Actor):
    def __init__(self, marker: str) -> None:
        self.marker = marker
        self.procs = this_host().spawn_procs(per_host={"gpus": 1})
        self.child = self.procs.spawn("grandchild", Worker)

    @endpoint
    def child_pid(self) -> int:
        return int(self.child.ping.call_one().get(timeout=10))

    def __cleanup__(self, exc: BaseException | None) -> None:
        with open(self.marker, "w") as f:
            f.write("cleaned")
