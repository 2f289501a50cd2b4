"""MeshFailure: the supervision event delivered to an owner's ``__supervise__``.

Semantics follow Meta Monarch's ``MeshFailure`` and Erlang/OTP supervision: the event names the
mesh, the failed ranks, where they ran, and the cause with its remote traceback.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["MeshFailure"]


@dataclass
class MeshFailure:
    """A failure of (part of) a mesh.

    Attributes:
        mesh_name: the name the mesh was spawned with.
        ranks: spawn ranks of the actors that failed.
        cause: one line: the exception (``ValueError: bad input``) or the signal
            (``killed by signal 9 (SIGKILL)``).
        traceback: the remote traceback text, if any.
        host: the host name of the failed proc.
        pid: the OS process id of the failed proc.
        actor: a readable name of the first failed actor (``trainers[3]``).
    """

    mesh_name: str
    ranks: list[int]
    cause: str
    traceback: str = ""
    host: str = ""
    pid: int = 0
    actor: str = ""
    chained: list[MeshFailure] = field(default_factory=list)

    def report(self) -> str:
        """A readable multi-line report for people."""
        lines = [
            f"actor {self.actor or self.mesh_name} failed "
            f"(mesh {self.mesh_name!r}, ranks {self.ranks}, host {self.host or '?'}, pid {self.pid or '?'})",
            f"cause: {self.cause}",
        ]
        if self.traceback:
            lines += ["remote traceback:", self.traceback.rstrip()]
        for c in self.chained:
            lines += ["", "while handling:", c.report()]
        return "\n".join(lines)

    def __str__(self) -> str:
        return f"MeshFailure({self.actor or self.mesh_name}: {self.cause})"
