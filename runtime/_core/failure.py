"""MeshFailure: the supervision event delivered to an owner's ``__supervise__``.

Semantics follow Meta Monarch's ``MeshFailure`` and Erlang/OTP supervision: the event names the
mesh, the failed ranks, where they ran, and the cause with its remote traceback. Its texts read as
Monarch's (``str()``: ``MeshFailure(mesh_name=..., crashed_ranks=[0], event=Supervision event:
actor ... failed: ...)``; ``report()``: ``The actor ... and all its descendants have failed:``),
with the host, pid and rank added.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["MeshFailure"]


def _indent(text: str, prefix: str = "  ") -> str:
    return "\n".join(prefix + line if line else line for line in text.rstrip().splitlines())


@dataclass(repr=False)
class MeshFailure:
    """A failure of (part of) a mesh.

    Attributes:
        mesh_name: the name the mesh was spawned with.
        ranks: spawn ranks of the actors that failed (Monarch's ``crashed_ranks``).
        cause: one line: the exception (``ValueError: bad input``) or the proc's end
            (``the process this actor was running on failed: Killed(sig=9) ...``).
        traceback: the remote traceback text, if any.
        host: the host name of the failed proc.
        pid: the OS process id of the failed proc.
        actor: a readable name of the first failed actor (``trainers[3]``).
        chained: failures this one was raised while handling (an owner's unhandled failure).
        qualified_actor: the first failed actor as Monarch names it,
            ``<module.Class trainers{'gpus': 3/4}>``; empty when unknown (``actor`` is used).
    """

    mesh_name: str
    ranks: list[int]
    cause: str
    traceback: str = ""
    host: str = ""
    pid: int = 0
    actor: str = ""
    chained: list[MeshFailure] = field(default_factory=list)
    qualified_actor: str = ""

    @property
    def crashed_ranks(self) -> list[int]:
        """Monarch's name for :attr:`ranks`."""
        return self.ranks

    @property
    def who(self) -> str:
        """The failed actor's name as the texts show it (Monarch's form when known)."""
        return self.qualified_actor or self.actor or self.mesh_name

    def _details(self) -> str:
        where = (
            f"(actor {self.actor or '?'}, mesh {self.mesh_name!r}, ranks {self.ranks}, "
            f"host {self.host or '?'}, pid {self.pid or '?'})"
        )
        lines = [self.cause, where]
        if self.traceback:
            lines += ["remote traceback:", _indent(self.traceback)]
        return "\n".join(lines)

    @property
    def event(self) -> str:
        """Monarch's event text: ``Supervision event: actor <...> failed:`` and the cause, indented."""
        return f"Supervision event: actor {self.who} failed:\n{_indent(self._details())}"

    def report(self) -> str:
        """A readable multi-line report for people, headed as Monarch's:
        ``The actor <...> and all its descendants have failed:``."""
        text = (
            f"The actor {self.who} and all its descendants have failed:\n{_indent(self._details())}"
        )
        for c in self.chained:
            text += "\n\nwhile handling:\n" + c.report()
        return text

    def __str__(self) -> str:
        return f"MeshFailure(mesh_name={self.mesh_name}, crashed_ranks={self.ranks}, event={self.event})"

    __repr__ = __str__
