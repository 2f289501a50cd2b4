"""Actors for test_supervision_semantics.py (importable so procs load them by reference)."""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

from monarch.actor import Actor, MeshFailure, Port, ProcMesh, current_rank, endpoint


class Simulated(BaseException):
    """A ``BaseException`` that is not a request to end the process (as Monarch's tests raise)."""


class Fragile(Actor):
    """Fails in every way the failure policy tells apart."""

    @endpoint
    def ping(self) -> int:
        return current_rank().rank

    @endpoint
    def raise_base(self) -> None:
        raise Simulated("simulated failure")

    @endpoint
    def raise_plain(self) -> None:
        raise ValueError("plain failure")

    @endpoint(explicit_response_port=True)
    def bad_port(self, port: Port[int]) -> None:
        raise KeyError("no answer")

    @endpoint
    def die(self) -> None:
        os._exit(1)  # no cleanup, no report: only the proc's end tells

    @endpoint
    def leave(self) -> None:
        sys.exit(3)  # ends the proc, after its failure report is sent


class Parent(Actor):
    """Owns a ``Fragile`` mesh spawned on another proc mesh; ``__supervise__`` returns ``handled``."""

    def __init__(self, procs: ProcMesh, handled: bool = True) -> None:
        self.child = procs.spawn("child", Fragile)
        self.handled = handled
        self.causes: list[str] = []
        self.supervised = asyncio.Event()

    @endpoint
    async def child_mesh(self) -> Any:
        return self.child

    @endpoint
    async def break_child_and_wait(self) -> None:
        await self.child.ping.call()
        self.child.raise_plain.broadcast()
        await asyncio.Event().wait()  # only this actor's own failure ends the call

    @endpoint
    async def die(self) -> None:
        os._exit(1)

    @endpoint
    async def end_child_proc_and_wait(self) -> list[str]:
        """Nothing was ever sent from the child's proc to this one: its failure report is the
        first thing it sends here, on a link it must dial as it ends."""
        self.child.leave.broadcast()
        await asyncio.wait_for(self.supervised.wait(), timeout=30)
        return list(self.causes)

    def __supervise__(self, failure: MeshFailure) -> bool:
        self.causes.append(failure.cause)
        self.supervised.set()
        return self.handled
