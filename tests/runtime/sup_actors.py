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
    """Owns a child mesh; its policy decides what __supervise__ returns."""

    def __init__(self, policy: str, where: str = "proc") -> None:
        self.policy = policy
        self.failures: list[MeshFailure] = []
        if where == "proc":
            self.child = this_proc().spawn("child", Worker)
        else:
            self.procs = this_host().spawn_procs(per_host={"gpus": 2})
            self.child = self.procs.spawn("child", Worker)
        self.cleaned = False

    def __supervise__(self, failure: MeshFailure) -> bool:
        self.failures.append(failure)
        if self.policy == "raise":
            raise RuntimeError("supervisor gave up")
        return self.policy == "handle"

    @endpoint
    def child_pids(self) -> list[int]:
        return list(self.child.ping.call().get(timeout=10).values())

    @endpoint
    def break_child(self) -> None:
        self.child.slice(**{k: 0 for k in self.child.extent}).boom.broadcast()

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
