"""The one error hierarchy of monarch-idl, rooted at :class:`MonarchError`.

Semantics follow Meta Monarch's (``monarch.actor.ActorError``, ``SupervisionError``) where a class
exists there; the rest are named after the situation a caller can act on.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ActorError",
    "CallTimeout",
    "ConnectError",
    "GenerationError",
    "MonarchError",
    "ProtocolError",
    "RDMAError",
    "RDMAUnavailableError",
    "SchemaError",
    "ShardingError",
    "SupervisionError",
    "TransportError",
]


class MonarchError(Exception):
    """Root of every error raised by monarch-idl."""


class SchemaError(MonarchError):
    """A Cap'n Proto schema is invalid.

    Attributes:
        path: the schema file as the user named it.
        line: 1-based line, or 0 when unknown.
        column: 1-based column, or 0 when unknown.
        message: what is wrong, without the location.
    """

    def __init__(self, path: str, line: int, column: int, message: str) -> None:
        self.path = path
        self.line = line
        self.column = column
        self.message = message
        super().__init__(f"{path}:{line}:{column}: {message}")


class GenerationError(MonarchError):
    """The generator could not turn a valid schema into Python (name clash, unsupported type)."""


_TB_HEADER = "Traceback (most recent call last):"


def _indent(text: str, prefix: str = "  ") -> str:
    return "\n".join(prefix + line if line else line for line in text.rstrip().splitlines())


class ActorError(MonarchError):
    """An endpoint raised; the exception came back to the caller.

    ``str()`` reads as Monarch's (``Actor call trainers.step failed``, then the remote traceback
    under ``Traceback of where the remote call failed``), with the exception line and the failing
    actor's rank added on the first line.

    Attributes:
        exception: the original exception, rebuilt in the caller when it could be unpickled,
            else a ``RuntimeError`` carrying its ``repr``.
        remote_traceback: the formatted traceback from the actor's process.
        actor: a readable name of the actor (``mesh[rank]``) that raised.
        call: the call that failed as Monarch names it, ``mesh.endpoint`` (empty when unknown).
    """

    def __init__(
        self, exception: BaseException, remote_traceback: str = "", actor: str = "", call: str = ""
    ) -> None:
        self.exception = exception
        self.remote_traceback = remote_traceback
        self.actor = actor
        self.call = call
        super().__init__(exception, remote_traceback, actor, call)

    @property
    def message(self) -> str:
        """The first line: ``Actor call trainers.step failed: ValueError: bad input (in trainers[3])``."""
        where = f" (in {self.actor})" if self.actor else ""
        call = f"Actor call {self.call} failed" if self.call else "Actor call failed"
        return f"{call}: {type(self.exception).__name__}: {self.exception}{where}"

    def __str__(self) -> str:
        text = self.message
        tb = self.remote_traceback.rstrip()
        if tb:
            if tb.startswith(_TB_HEADER):
                tb = tb[len(_TB_HEADER) :].lstrip("\n")
            text += "\n Traceback of where the remote call failed (most recent call last):\n" + tb
        return text

    def __repr__(self) -> str:
        return f"ActorError({self.exception!r}, {self.message!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (ActorError, (self.exception, self.remote_traceback, self.actor, self.call))


class SupervisionError(MonarchError, RuntimeError):
    """The actor a call was sent to has failed or was stopped; the call will never be answered.

    A ``RuntimeError`` too, as Monarch's is, so ``except RuntimeError`` written against
    Monarch catches it.

    The message reads as Monarch's: ``Endpoint call trainers.step() failed, The actor
    <mod.Trainer trainers{'gpus': 3/4}> and all its descendants have failed:`` followed by the
    cause, indented. Build messages with :meth:`actor_failed`, :meth:`actor_stopped` and
    :meth:`for_call` so every path words them the same.
    """

    @classmethod
    def actor_failed(cls, actor: str, cause: str, call: str = "") -> SupervisionError:
        """The actor ``actor`` failed with ``cause`` (multi-line text is indented)."""
        err = cls(f"The actor {actor} and all its descendants have failed:\n{_indent(cause)}")
        return err.for_call(call) if call else err

    @classmethod
    def actor_stopped(cls, actor: str, reason: str, call: str = "") -> SupervisionError:
        """The actor ``actor`` was stopped (``reason``: who stopped it, e.g. ``stopped by client``)."""
        err = cls(f"Supervision event: actor {actor} has status:\n  stopped: {reason}")
        return err.for_call(call) if call else err

    @classmethod
    def proc_failed(cls, actor: str, reason: str, call: str = "") -> SupervisionError:
        """The process ``actor`` ran on ended (``reason``: ``Killed(sig=9) ...``, ``exited ...``)."""
        return cls.actor_failed(
            actor, f"the process this actor was running on failed: {reason}", call
        )

    @classmethod
    def controller_lost(cls, actor: str, mesh: str, owner: str, reason: str, call: str = "") -> SupervisionError:
        """The process that owns mesh ``mesh`` (its controller, at ``owner``) is dead, so the
        mesh's actors are gone with it (``reason``: how that process ended). Worded as Monarch's
        ``timed out reaching controller ... for mesh ...`` (Monarch notices by a timeout; here the
        owner's death was seen, and ``reason`` says how)."""
        return cls.actor_failed(
            actor, f"timed out reaching controller {owner} for mesh {mesh}: the controller's proc is dead ({reason})", call
        )

    def for_call(self, call: str) -> SupervisionError:
        """This error as seen by the call ``call`` (``mesh.endpoint``): Monarch's
        ``Endpoint call mesh.endpoint() failed, `` prefix; unchanged if it already has one."""
        text = str(self)
        if not call or text.startswith("Endpoint call "):
            return self
        return type(self)(f"Endpoint call {call}() failed, {text}")


class TransportError(MonarchError):
    """A channel between two processes broke or could not be used."""


class ConnectError(TransportError):
    """A connection could not be made (address unreachable, authentication refused)."""


class ProtocolError(TransportError):
    """A peer sent a frame that is malformed, oversized or unauthenticated."""


class CallTimeout(MonarchError, TimeoutError):
    """A call, or a wait on its future, ran past its timeout. The future is not consumed."""


class RDMAError(MonarchError):
    """A one-sided read or write failed (bad key, out of bounds, dropped handle, owner gone)."""


class RDMAUnavailableError(RDMAError):
    """The requested RDMA backend cannot be used here (no device, no pyverbs)."""


class ShardingError(MonarchError):
    """A distributed tensor's placements do not fit its mesh or operation."""
