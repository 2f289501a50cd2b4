"""Actors for the error-text tests (importable so procs load them by reference)."""

from __future__ import annotations

import os
import time

from monarch.actor import Actor, Port, endpoint


class Victim(Actor):
    @endpoint
    def pid(self) -> int:
        return os.getpid()

    @endpoint
    def boom(self) -> None:
        raise ValueError("bad input 42")

    @endpoint
    def chained(self) -> None:
        try:
            raise KeyError("inner cause")
        except KeyError as e:
            raise RuntimeError("outer failure") from e

    @endpoint(explicit_response_port=True)
    def drop_port(self, port: Port[int]) -> None:
        raise LookupError("no answer for you")

    @endpoint
    def hold(self, started: Port[int], seconds: float) -> float:
        """Tell ``started`` (with this proc's pid) that the call is running, then block."""
        started.send(os.getpid())
        time.sleep(seconds)  # the long call under test, not a synchronisation
        return seconds
