"""Errors as results: how an exception raised by a handler travels to its caller.

The remote exception is pickled with its formatted traceback, the failing actor's name and the
call (``mesh.endpoint``); the caller raises ``ActorError`` carrying them (Monarch's ``ActorError``:
``Actor call mesh.endpoint failed``), or the ``SupervisionError`` itself when the runtime refused
the call.
"""

from __future__ import annotations

import traceback
from typing import Any

from .._core.errors import ActorError, SupervisionError
from .._transport.pickle_codec import dumps, loads

__all__ = ["decode_error", "encode_error"]


def encode_error(exc: BaseException, actor: str, call: str = "") -> tuple[bytes, list[Any]]:
    """Pickle an exception with its traceback text for the caller (never raises).

    Args:
        exc: the exception the handler raised (or the runtime's refusal).
        actor: the failing actor, ``mesh[rank]``; empty when none.
        call: the call that failed, ``mesh.endpoint``; empty when unknown.
    """
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    try:
        return dumps((exc, tb, actor, call))
    except Exception:
        return dumps((RuntimeError(f"{type(exc).__name__}: {exc}"), tb, actor, call))


def decode_error(payload: Any, bufs: list[memoryview]) -> BaseException:
    """The exception a caller raises for an error result (never raises itself).

    A ``BaseException`` that is not an ``Exception`` raised while unpickling (a hostile or broken
    ``__reduce__`` raising ``SystemExit``) is caught too, so it cannot end the caller's loop thread.
    """
    try:
        exc, tb, actor, call = loads(payload, bufs)
    except BaseException as e:  # see the docstring: never let decoding end the loop
        return ActorError(RuntimeError(f"undecodable remote error: {type(e).__name__}: {e}"))
    if isinstance(exc, SupervisionError):
        return exc
    if not isinstance(exc, BaseException):
        return ActorError(RuntimeError(f"remote error is not an exception: {exc!r}"))
    return ActorError(exc, tb, actor, call)
