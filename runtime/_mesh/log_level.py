"""The actor ``ProcMesh.logging_option`` spawns on a mesh to set its procs' logger level."""

from __future__ import annotations

import logging

from .actor import Actor
from .endpoint import endpoint

__all__ = ["LogLevel"]


class LogLevel(Actor):
    """Sets the root logger's level of the proc it runs on (one per proc of a mesh)."""

    @endpoint
    def set_level(self, level: int) -> None:
        """Make the proc's root logger pass records at ``level`` and above (``logging`` levels)."""
        logging.getLogger().setLevel(level)
