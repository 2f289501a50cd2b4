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
