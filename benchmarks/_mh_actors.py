"""The actor of the multi-host benchmark (``benchmarks/multihost_bench.py``), Monarch API only.

Kept in an importable module so that both runtimes pickle it by reference; it imports nothing
beyond the standard library and ``monarch.actor``, so it runs under torchmonarch's venv too.
"""

from __future__ import annotations

import socket
import time
from typing import Any

from monarch.actor import Actor, endpoint


class Probe(Actor):
    """Echoes, sleeps (a call kept in flight while its host is broken) and counts one-way notes."""

    def __init__(self) -> None:
        self.notes = 0

    @endpoint
    def ping(self, x: Any) -> Any:
        return x

    @endpoint
    def where(self) -> str:
        return socket.gethostname()

    @endpoint
    def sleep(self, seconds: float) -> float:
        time.sleep(seconds)
        return seconds

    @endpoint
    def note(self, x: Any) -> None:
        self.notes += 1

    @endpoint
    def count(self) -> int:
        """Notes received so far (per-sender FIFO: every earlier broadcast was handled)."""
        return self.notes
