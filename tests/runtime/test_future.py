from __future__ import annotations

import asyncio
import threading

import pytest
from monarch._core.errors import CallTimeout
from monarch._core.future import Future


def test_get_timeout_does_not_consume_the_future() -> None:
    f: Future[int] = Future()
    with pytest.raises(CallTimeout):
        f.get(timeout=0.05)
    with pytest.raises(TimeoutError):
        f.get(timeout=0.01)
    threading.Timer(0.05, f.set_result, (7,)).start()
    assert f.get(timeout=5) == 7
    assert f.get() == 7


def test_await_from_another_event_loop_thread() -> None:
    f: Future[str] = Future()

    async def main() -> str:
        threading.Timer(0.05, f.set_result, ("x",)).start()
        return await f

    assert asyncio.run(main()) == "x"


def test_exception_is_raised_by_every_get() -> None:
    f: Future[int] = Future()
    f.set_exception(ValueError("bad"))
    for _ in range(2):
        with pytest.raises(ValueError, match="bad"):
            f.get()


def test_a_coroutine_future_runs_once_when_first_asked_and_keeps_its_result() -> None:
    runs: list[int] = []

    async def work() -> int:
        runs.append(1)
        return 7

    f: Future[int] = Future._from_coro(work())
    assert runs == [] and not f.done()  # lazy: nothing runs until someone asks
    assert f.get() == 7 and f.get() == 7
    assert runs == [1]

    async def awaited() -> int:
        g: Future[int] = Future._from_coro(work())
        first = await g
        return first + g.get()  # the awaited result is kept for get()

    assert asyncio.run(awaited()) == 14
    assert runs == [1, 1]


def test_a_coroutine_future_raises_what_the_coroutine_raised_every_time() -> None:
    async def boom() -> int:
        raise ValueError("boom")

    f: Future[int] = Future._from_coro(boom())
    for _ in range(2):
        with pytest.raises(ValueError, match="boom"):
            f.get()


def test_get_of_a_coroutine_future_works_on_a_thread_that_runs_an_event_loop() -> None:
    async def inner() -> str:
        await asyncio.sleep(0)
        return "ok"

    async def outer() -> str:
        return Future._from_coro(inner()).get(timeout=10)  # e.g. a notebook cell calling .get()

    assert asyncio.run(outer()) == "ok"


def test_accumulate_folds_streamed_futures_in_order_when_asked() -> None:
    import operator
    import unittest.mock

    from monarch.actor import Accumulator

    async def value(v: int) -> int:
        return v

    endpoint = unittest.mock.MagicMock()
    endpoint.stream.return_value = iter([Future._from_coro(value(v)) for v in (1, 2, 3)])
    acc = Accumulator(endpoint, [], lambda a, v: [*a, v]).accumulate("x", k=1)
    endpoint.stream.assert_called_once_with("x", k=1)  # the calls go out at once
    assert acc.get(timeout=10) == [1, 2, 3]
    endpoint.stream.return_value = iter([])
    assert Accumulator(endpoint, 42, operator.add).accumulate().get(timeout=10) == 42
