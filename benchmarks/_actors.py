"""Actors shared by the actor workloads, written once against the Monarch actor API.

Kept in an importable module (not ``__main__``) so that both runtimes pickle the classes by
reference, as a real application would; the workload runner puts the repository root on
``PYTHONPATH`` so that every spawned proc can import this module.
"""

from __future__ import annotations

from typing import Any

from monarch.actor import Actor, endpoint


class Echo(Actor):
    """Returns its argument; counts one-way messages for the broadcast barrier."""

    def __init__(self) -> None:
        self.count = 0

    @endpoint
    def ping(self, x: Any) -> Any:
        return x

    @endpoint
    def note(self, x: Any) -> None:
        self.count += 1

    @endpoint
    def barrier(self) -> int:
        """Replies once every earlier message from this caller was handled (per-sender FIFO)."""
        n = self.count
        self.count = 0
        return n
