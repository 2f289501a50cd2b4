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


class ActorError(MonarchError):
    """An endpoint raised; the exception came back to the caller.

    Attributes:
        exception: the original exception, rebuilt in the caller when it could be unpickled,
            else a ``RuntimeError`` carrying its ``repr``.
        remote_traceback: the formatted traceback from the actor's process.
        actor: a readable name of the actor (``mesh[rank]``) that raised.
    """

    def __init__(self, exception: BaseException, remote_traceback: str = "", actor: str = "") -> None:
        self.exception = exception
        self.remote_traceback = remote_traceback
        self.actor = actor
        super().__init__(exception, remote_traceback, actor)

    def __str__(self) -> str:
        where = f" in {self.actor}" if self.actor else ""
        text = f"{type(self.exception).__name__}: {self.exception}{where}"
        if self.remote_traceback:
            text += "\n\nRemote traceback:\n" + self.remote_traceback.rstrip()
        return text

    def __reduce__(self) -> tuple[Any, ...]:
        return (ActorError, (self.exception, self.remote_traceback, self.actor))


class SupervisionError(MonarchError):
    """The actor a call was sent to has failed or was stopped; the call will never be answered."""


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
