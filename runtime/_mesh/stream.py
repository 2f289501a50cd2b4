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

    ``for fut in stream`` yields futures (Monarch's ``Iterator[Future[R]]``: call ``fut.get()``
    or ``await fut``); ``async for value in stream`` yields the values. An error result raises
    from ``fut.get()`` / from the ``async for``. When every rank answers once (an endpoint that
    is not a generator), ``count`` is known and iterating never blocks: the k-th future is the
    k-th answer to arrive, so ``[await f for f in mesh.ep.stream()]`` works in an async endpoint.
    """

    def __init__(self, sink: StreamSink, timeout_s: float | None = None, count: int | None = None) -> None:
        self._sink = sink
        self._timeout_s = timeout_s
        self._count = count

    def __iter__(self) -> Iterator[Future[R]]:
        if self._count is not None:
            for _ in range(self._count):
                yield _flatten(self._sink.next())
            return
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


def _flatten(outer: Future[Future[R] | None]) -> Future[R]:
    """The future of the item that ``outer`` will give (an early end fails it)."""
    out: Future[R] = Future()

    def on_item(item: Future[R]) -> None:
        exc = item.exception(0)
        if exc is not None:
            out.set_exception(exc)
        else:
            out.set_result(item.get(0))

    def on_outer(f: Future[Future[R] | None]) -> None:
        exc = f.exception(0)
        if exc is not None:
            out.set_exception(exc)
            return
        item = f.get(0)
        if item is None:
            out.set_exception(RuntimeError("the stream ended before this rank answered"))
        else:
            item.add_done_callback(on_item)

    outer.add_done_callback(on_outer)
    return out


