"""The calling context: which actor is running and which message it is handling.

Semantics follow Meta Monarch's ``context()``: ``context().actor_instance`` (``rank``,
``actor_id``, ``proc``) and ``context().message_rank`` (the position of this actor in the sliced
mesh the current message was sent to).
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .._core.errors import MonarchError
from .._core.shape import Extent, Point
from .current import current_runtime

__all__ = [
    "EMPTY_EXTENT",
    "ActorAborted",
    "Context",
    "CreatorInstance",
    "Instance",
    "context",
    "current_actor_name",
    "current_creator",
    "current_rank",
    "current_size",
    "reset_context",
    "set_context",
]


class ActorAborted(MonarchError):
    """The cause recorded when an actor fails itself with ``Instance.abort`` or ``Instance.kill``."""


@dataclass(frozen=True)
class CreatorInstance:
    """Who spawned an actor, and who spawned that one, up to the client (Monarch's
    ``CreatorInstance``; picklable, it travels with the spawn). Monarch's also carries the
    creator's proc meshes; this one carries the names only.

    Attributes:
        rank: the creator's point in its own mesh (empty for the client).
        name: the creator's mesh name; ``"root"`` for the client.
        class_name: the creator's ``module.Class``; None for the client.
        creator: the creator's own creator; None for the client.
    """

    rank: Point
    name: str
    class_name: str | None
    creator: CreatorInstance | None

    def __repr__(self) -> str:
        return _qualified_name(self)


def _qualified_name(ins: CreatorInstance | None) -> str:
    names = []
    while ins is not None:
        prefix = "" if ins.class_name is None else f"{ins.class_name} "
        names.append(f"<{prefix}{ins.name}{ins.rank if len(ins.rank) else ''}>")
        ins = ins.creator
    return ".".join(reversed(names))


@dataclass
class Instance:
    """The running actor (or the client, at the root).

    Attributes:
        rank: this actor's point in the mesh it was spawned as.
        actor_id: ``"<mesh id>[<rank>]"``, unique in the job.
        name: the mesh name given to ``spawn``; ``"root"`` for the client (as Monarch's).
        proc_addr: the address of the OS process hosting it.
        pid: that process's id.
        class_name: the actor's ``module.Class``; None for the client and a proc's own context.
        creator: who spawned this actor (:class:`CreatorInstance`); None for the client.
    """

    rank: Point
    actor_id: str
    name: str
    proc_addr: str
    pid: int
    class_name: str | None = None
    creator: CreatorInstance | None = None
    _proc: Any = None
    _owned: Any = None
    _actor: Any = None  # the ActorInstance that runs this actor (None: the client)

    def __str__(self) -> str:
        """Monarch's name of the running actor, through the actors that spawned it:
        ``<root>.<module.Parent parent{'gpus': 0/2}>.<module.Class name{'gpus': 0/4}>``;
        ``<root>`` for the client."""
        if self._actor is None:
            return "<root>"
        return _qualified_name(CreatorInstance(self.rank, self.name, self.class_name, self.creator or ROOT_CREATOR))

    @property
    def proc(self) -> Any:
        """The one-proc ProcMesh this actor runs on (spawn children there with ``.spawn``)."""
        return self._proc

    @property
    def proc_mesh(self) -> Any:
        """The ProcMesh this actor was spawned over (Monarch's ``Instance.proc_mesh``), where it
        is this actor's own proc: the client, a controller, an actor spawned on ``this_proc()``
        or on a one-proc mesh (then the same as :attr:`proc`).

        Raises:
            NotImplementedError: the actor is one of several of its mesh: the addresses of a
                multi-proc mesh are not sent to its procs here (spawn children from the
                client, or on :attr:`proc`).
        """
        if self.rank.extent.nelements > 1:
            raise NotImplementedError(
                f"Instance.proc_mesh of {self.actor_id}, one of {self.rank.extent.nelements} actors: "
                "the procs of a multi-proc mesh are not known to its actors here; use "
                "context().actor_instance.proc for this actor's own proc"
            )
        return self._proc

    def __repr__(self) -> str:
        return f"<Instance {self.actor_id} rank={dict(self.rank)} pid={self.pid}>"

    def _as_creator(self) -> CreatorInstance:
        """This instance as the creator of the meshes it spawns."""
        if self.class_name is None and self.creator is None:
            return ROOT_CREATOR if self._actor is None else CreatorInstance(self.rank, self.name, None, None)
        return CreatorInstance(self.rank, self.name, self.class_name, self.creator)

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
#: the client, as the creator of the meshes it spawns
ROOT_CREATOR = CreatorInstance(Point(0, EMPTY_EXTENT), "root", None, None)


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


def install_log_prefix(enabled: Callable[[], bool], outside: str | None) -> None:
    """Make log records start with Monarch's ``[actor=<root>.<module.Class name{point}>] ``.

    Installs a ``logging`` record factory (no handler: the program's own handlers print the
    records). Inside an actor's handler the prefix names that actor; elsewhere it is
    ``outside`` (``"<root>"`` in the client), or nothing when ``outside`` is None (a proc's own
    records). Empty and non-string messages (structured logs) are left alone.

    Args:
        enabled: asked per record (``monarch.config``'s ``prefix_python_logs_with_actor``, which
            may change while the program runs).
        outside: the name used outside any actor.
    """
    make = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make(*args, **kwargs)
        if record.msg and isinstance(record.msg, str) and enabled():
            ctx = _current.get()
            who = str(ctx.actor_instance) if ctx is not None else outside
            if who is not None:
                record.msg = f"[actor={who}] {record.msg}"
        return record

    logging.setLogRecordFactory(factory)


def current_creator() -> CreatorInstance:
    """The creator of a mesh spawned now: the handling actor, else the client (``root``)."""
    ctx = _current.get()
    return ROOT_CREATOR if ctx is None else ctx.actor_instance._as_creator()
