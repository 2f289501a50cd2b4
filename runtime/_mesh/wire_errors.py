"""Errors as results: how an exception raised by a handler travels to its caller.

The remote exception is pickled with its formatted traceback and the failing actor's name; the
caller raises ``ActorError`` carrying all three (Monarch's ``ActorError``), or the
``SupervisionError`` itself when the runtime refused the call.
"""

from __future__ import annotations

import traceback
from typing import Any

from .._core.errors import ActorError, SupervisionError
from .._transport.pickle_codec import dumps, loads

__all__ = ["decode_error", "encode_error"]


def encode_error(exc: BaseException, actor: str) -> tuple[bytes, list[Any]]:
    """Pickle an exception with its traceback text for the caller (never raises)."""
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    try:
        return dumps((exc, tb, actor))
    except Exception:
        return dumps((RuntimeError(f"{type(exc).__name__}: {exc}"), tb, actor))


def decode_error(payload: Any, bufs: list[memoryview]) -> BaseException:
    """The exception a caller raises for an error result (never raises itself).

    A ``BaseException`` that is not an ``Exception`` raised while unpickling (a hostile or broken
    ``__reduce__`` raising ``SystemExit``) is caught too, so it cannot end the caller's loop thread.
    """
    try:
        exc, tb, actor = loads(payload, bufs)
    except BaseException as e:  # see the docstring: never let decoding end the loop
        return ActorError(RuntimeError(f"undecodable remote error: {type(e).__name__}: {e}"))
    if isinstance(exc, SupervisionError):
        return exc
    if not isinstance(exc, BaseException):
        return ActorError(RuntimeError(f"remote error is not an exception: {exc!r}"))
    return ActorError(exc, tb, actor)
