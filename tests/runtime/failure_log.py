"""The unhandled failures a test provokes, caught by installing a log as the unhandled-fault hook."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import monarch.actor as ma
import pytest
from monarch.actor import MeshFailure


class FailureLog:
    """The unhandled failures reported while a test runs (installed as
    ``monarch.actor.unhandled_fault_hook``); :meth:`wait_for` wakes on the report itself."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.items: list[MeshFailure] = []

    def __call__(self, failure: MeshFailure) -> None:
        with self._cond:
            self.items.append(failure)
            self._cond.notify_all()

    def of(self, mesh_name: str) -> list[MeshFailure]:
        with self._cond:
            return [f for f in self.items if f.mesh_name == mesh_name]

    def wait_for(self, mesh_name: str, timeout_s: float = 20.0) -> MeshFailure:
        """The first failure of mesh ``mesh_name``; fails the test after ``timeout_s`` s."""
        with self._cond:
            ok = self._cond.wait_for(lambda: any(f.mesh_name == mesh_name for f in self.items), timeout_s)
            assert ok, f"no failure of mesh {mesh_name!r} in {timeout_s} s; got {self.items}"
            return next(f for f in self.items if f.mesh_name == mesh_name)


@pytest.fixture
def failures() -> Iterator[FailureLog]:
    """A :class:`FailureLog` installed as the unhandled-fault hook for one test."""
    log = FailureLog()
    previous = ma.unhandled_fault_hook
    ma.unhandled_fault_hook = log
    try:
        yield log
    finally:
        ma.unhandled_fault_hook = previous
