"""A module whose global holds an object with a finalizer (imported by a proc for an actor)."""

from __future__ import annotations


class _Marker:
    def __init__(self, path: str) -> None:
        self.path = path

    def __del__(self) -> None:
        with open(self.path, "w") as f:
            f.write("finalized")


_held: _Marker | None = None


def stash(path: str) -> None:
    global _held
    _held = _Marker(path)
