"""The calling context: which actor is running and which message it is handling.

Semantics follow Meta Monarch's ``context()``: ``context().actor_instance`` (``rank``,
``actor_id``, ``proc``) and ``context().message_rank`` (the position of this actor in the sliced
mesh the current message was sent to).
"""

from __future__ import annotations

import contextvars
import logging
from dataclasses import dataclass
from typing import Any

from .._core.errors import MonarchError
from .._core.shape import Extent, Point
from .current import current_runtime

__all__ = [
    "EMPTY_EXTENT",
    "ActorAborted",
    "Context",
    "Instance",
    "context",
    "current_actor_name",
    "current_rank",
    "current_size",
    "reset_context",
    "set_context",
]


class ActorAborted(MonarchError):
    """The cause recorded when an actor fails itself with ``Instance.abort`` or ``Instance.kill``."""


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
    _actor: Any = None  # the ActorInstance that runs this actor (None: the client)

    def __str__(self) -> str:
        """Monarch's name of the running actor: ``<root>.<module.Class name{'gpus': 0/4}>``;
        ``<root>`` for the client."""
        actor = self._actor
        return "<root>" if actor is None else f"<root>.{actor.qualified}"

    @property
    def proc(self) -> Any:
        """The one-proc ProcMesh this actor runs on (spawn children there with ``.spawn``)."""
        return self._proc

    def __repr__(self) -> str:
        return f"<Instance {self.actor_id} rank={dict(self.rank)} pid={self.pid}>"

    def abort(self, reason: str | None = None) -> None:
        """Fail this actor now (Monarch's ``Instance.abort``); call it from the actor's own handler.

        The actor becomes unhealthy at once: the owner of its mesh receives a ``MeshFailure``
        (handled by its ``__supervise__`` or, in the client, the unhandled fault hook) whose
        cause reads ``ActorAborted: actor <Class> <name>[<rank>] explicitly aborted due to: <reason>``; the
        call being handled and every later call fail with ``SupervisionError``. The handler
        itself keeps running to its end (its result is dropped).

        Args:
            reason: why, shown in the failure; None shows ``no reason provided``.

        Raises:
            RuntimeError: called in the client (or a proc outside any actor), which is not an
                actor that can fail; use ``shutdown_context()`` to end the client.
        """
        self._fail_actor("explicitly aborted", reason)

    def kill(self, reason: str | None = None) -> None:
        """Terminate this actor with a failure (Monarch's ``Instance.kill``): as :meth:`abort`,
        with the cause ``... killed due to: <reason>``.

        Raises:
            RuntimeError: called outside an actor (see :meth:`abort`).
        """
        self._fail_actor("killed", reason)

    def stop(self, reason: str | None = None) -> None:
        """Stop this actor gracefully (Monarch's ``Instance.stop``): messages already queued are
        handled first, then the meshes it owns are stopped and ``__cleanup__(None)`` runs. Its
        owner sees a stop, not a failure; calls arriving after the stop fail with
        ``SupervisionError``. Returns at once (any thread).

        Args:
            reason: why; accepted for Monarch compatibility and logged at INFO level.

        Raises:
            RuntimeError: called outside an actor (see :meth:`abort`).
        """
        actor = self._running_actor("stop")
        _log.info("actor %s stops itself: %s", self.actor_id, reason or "no reason provided")
        actor.stop()

    def _running_actor(self, what: str) -> Any:
        actor = self._actor
        if actor is None:
            raise RuntimeError(
                f"Instance.{what}() needs a running actor, but {self.actor_id} is the client or a proc, "
                "not an actor; to end the client call shutdown_context()"
            )
        return actor

    def _fail_actor(self, verb: str, reason: str | None) -> None:
        actor = self._running_actor("abort" if verb != "killed" else "kill")
        if actor.state == "failed":
            return
        who = f"{actor.cls.__qualname__} {actor.display}"
        actor._fail(ActorAborted(f"actor {who} {verb} due to: {reason or 'no reason provided'}"), verb)


class Context:
    """What ``context()`` returns."""

    __slots__ = ("actor_instance", "message_rank")

    def __init__(self, actor_instance: Instance, message_rank: Point) -> None:
        self.actor_instance = actor_instance
        self.message_rank = message_rank

    def __repr__(self) -> str:
        return f"<Context {self.actor_instance.actor_id} message_rank={dict(self.message_rank)}>"


_log = logging.getLogger("monarch.actor")
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


def current_actor_name() -> str:
    """The id of the running actor as a string (Monarch's ``current_actor_name``): inside a
    handler, that actor's ``actor_id`` (``"<mesh id>[<rank>]"``); in the client, the client's."""
    return str(context().actor_instance.actor_id)


def current_rank() -> Point:
    """``context().message_rank`` (Monarch's ``current_rank``)."""
    return context().message_rank


def current_size() -> dict[str, int]:
    """The extent of the mesh the current message was sent to, as a dict."""
    return dict(context().message_rank.extent)
