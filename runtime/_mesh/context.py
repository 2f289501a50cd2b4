"""The calling context: which actor is running and which message it is handling.

Semantics follow Meta Monarch's ``context()``: ``context().actor_instance`` (``rank``,
``actor_id``, ``proc``) and ``context().message_rank`` (the position of this actor in the sliced
mesh the current message was sent to).
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass
from typing import Any

from .._core.shape import Extent, Point
from .current import current_runtime

__all__ = ["EMPTY_EXTENT", "Context", "Instance", "context", "current_rank", "current_size", "reset_context", "set_context"]


@dataclass
class Instance:
    """The running actor (or the client, at the root).

    Attributes:
        rank: this actor's point in the mesh it was spawned as.
        actor_id: ``"<mesh id>[<rank>]"``, unique in the job.
        name: the mesh name given to ``spawn``.
        proc_addr: the address of the OS process hosting it.
        pid: that process's id.
    """

    rank: Point
    actor_id: str
    name: str
    proc_addr: str
    pid: int
    _proc: Any = None
    _owned: Any = None

    @property
    def proc(self) -> Any:
        """The one-proc ProcMesh this actor runs on (spawn children there with ``.spawn``)."""
        return self._proc

    def __repr__(self) -> str:
        return f"<Instance {self.actor_id} rank={dict(self.rank)} pid={self.pid}>"


class Context:
    """What ``context()`` returns."""

    __slots__ = ("actor_instance", "message_rank")

    def __init__(self, actor_instance: Instance, message_rank: Point) -> None:
        self.actor_instance = actor_instance
        self.message_rank = message_rank

    def __repr__(self) -> str:
        return f"<Context {self.actor_instance.actor_id} message_rank={dict(self.message_rank)}>"


_current: contextvars.ContextVar[Context | None] = contextvars.ContextVar("monarch_context", default=None)
EMPTY_EXTENT = Extent([], [])


def set_context(ctx: Context) -> contextvars.Token[Context | None]:
    return _current.set(ctx)


def reset_context(token: contextvars.Token[Context | None]) -> None:
    _current.reset(token)


def context() -> Context:
    """The current context: the handling actor inside an endpoint; elsewhere the process's own
    (the client at the root; in a proc, outside any handler, the proc itself)."""
    ctx = _current.get()
    if ctx is not None:
        return ctx
    return current_runtime().root_context


def current_rank() -> Point:
    """``context().message_rank`` (Monarch's ``current_rank``)."""
    return context().message_rank


def current_size() -> dict[str, int]:
    """The extent of the mesh the current message was sent to, as a dict."""
    return dict(context().message_rank.extent)
