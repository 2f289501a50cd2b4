"""Stream: the results of ``Endpoint.stream()`` in arrival order."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Generic, TypeVar

from .._core.future import Future
from .sinks import StreamSink

__all__ = ["Stream"]

R = TypeVar("R")


class Stream(Generic[R]):
    """Results of a streaming call, in arrival order across ranks.

    ``for fut in stream`` yields completed futures (Monarch's ``Iterator[Future[R]]``: call
    ``fut.get()``); ``async for value in stream`` yields the values. An error result raises
    from ``fut.get()`` / from the ``async for``.
    """

    def __init__(self, sink: StreamSink, timeout_s: float | None = None) -> None:
        self._sink = sink
        self._timeout_s = timeout_s

    def __iter__(self) -> Iterator[Future[R]]:
        while True:
            item = self._sink.next().get(self._timeout_s)
            if item is None:
                return
            yield item

    def __aiter__(self) -> AsyncIterator[R]:
        return self._agen()

    async def _agen(self) -> AsyncIterator[R]:
        while True:
            item = await self._sink.next()
            if item is None:
                return
            yield await item

    def __repr__(self) -> str:
        return f"<Stream remaining={self._sink.remaining}>"


