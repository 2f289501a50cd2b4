"""Handlers written once: a handler is a generator of the steps that must be awaited.

A step is whatever the handler must wait for (an endpoint's coroutine, the next item of an async
generator, or a runtime :class:`~monarch._core.future.Future` wrapped in :class:`WaitFuture`); the
handler receives each step's result (or its exception) back. Two drivers run the same steps:
:func:`drive_sync` on a sync actor's own thread, :func:`drive_async` on the proc's event loop.
The handlers themselves and the failure policy are in :mod:`monarch._mesh.instance`.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Generator
from typing import Any

from .._core.future import Future

__all__ = ["Steps", "WaitFuture", "awaitable", "drive_async", "drive_sync"]

# A handler: a generator that yields what must be awaited and receives its result.
Steps = Generator[Any, Any, Any]


class WaitFuture:
    """A step that waits for a runtime :class:`Future` (bounded by ``timeout_s``)."""

    __slots__ = ("future", "timeout_s")

    def __init__(self, future: Future[Any], timeout_s: float) -> None:
        self.future = future
        self.timeout_s = timeout_s


# results that can never be awaited, checked by type first: ``inspect.isawaitable`` ends in an
# ABC ``isinstance`` check (~0.4 us) that every handler returning a plain value would pay
_NEVER_AWAITABLE = frozenset(
    {
        type(None),
        bool,
        int,
        float,
        complex,
        str,
        bytes,
        bytearray,
        tuple,
        list,
        dict,
        set,
        frozenset,
    }
)


def awaitable(value: Any) -> bool:
    """Whether a handler's result must be awaited (a step) rather than sent as it is."""
    return type(value) not in _NEVER_AWAITABLE and inspect.isawaitable(value)


def drive_sync(steps: Steps) -> Any:
    """Run a handler on the actor's own thread: awaitables run to completion with ``asyncio.run``."""
    value: Any = None
    error: BaseException | None = None
    while True:
        try:
            step = steps.send(value) if error is None else steps.throw(error)
        except StopIteration as stop:
            return stop.value
        value, error = None, None
        try:
            if type(step) is WaitFuture:
                value = step.future.get(step.timeout_s)
            else:
                value = asyncio.run(_await(step))
        except BaseException as exc:  # handed to the handler, which decides
            error = exc


async def drive_async(steps: Steps) -> Any:
    """Run a handler on the proc's event loop: awaitables are awaited."""
    value: Any = None
    error: BaseException | None = None
    while True:
        try:
            step = steps.send(value) if error is None else steps.throw(error)
        except StopIteration as stop:
            return stop.value
        value, error = None, None
        try:
            if type(step) is WaitFuture:
                value = await asyncio.wait_for(_await(step.future), step.timeout_s)
            else:
                value = await step
        except BaseException as exc:  # handed to the handler (CancelledError too)
            error = exc


async def _await(aw: Awaitable[Any] | Future[Any]) -> Any:
    return await aw
