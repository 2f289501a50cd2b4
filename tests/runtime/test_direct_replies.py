"""Direct replies: a plain thread's calls to a Unix peer travel on a link of its own, whose
replies its ``get()`` reads itself (runtime/_mesh/router.py ``_DirectLink``), on real procs.

Every other way of waiting (``await``, done callbacks, ``done()`` polling, a second thread)
must still complete the future; per-sender order, timeouts and supervision must hold.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from monarch._core.errors import CallTimeout, SupervisionError
from monarch._mesh.current import current_runtime
from monarch.actor import Channel, ProcMesh
from monarch.testing import proc_mesh

from tests.runtime.actors import AsyncWorker, Counter, PortSender

TIMEOUT_S = 10.0


@pytest.fixture
def procs() -> Iterator[ProcMesh]:
    with proc_mesh({"gpus": 1}) as p:
        yield p


@pytest.fixture
def counter(procs: ProcMesh) -> Any:
    c = procs.spawn("counter", Counter, 0)
    assert c.echo.call_one(None).get(timeout=TIMEOUT_S) is None  # the thread's first call: shared link
    return c


def _direct_links() -> list[Any]:
    return list(current_runtime().router._direct_all)


def test_a_blocking_get_reads_its_reply_on_the_threads_own_link(counter: Any) -> None:
    for i in range(50):
        fut = counter.echo.call_one(i)
        assert fut._direct is not None  # the call went out on the direct link
        assert fut.get(timeout=TIMEOUT_S) == i
    (link,) = [d for d in _direct_links() if not d.handed]
    assert not link.link._reading  # the event loop never read it: get() did
    assert link.delivered >= 50  # and the answers came back on it


def test_a_threads_first_call_to_a_peer_takes_the_shared_link(procs: ProcMesh) -> None:
    c = procs.spawn("fresh", Counter, 0)
    result: list[Any] = []

    def run() -> None:  # a new thread: no direct link of its own yet
        first = c.echo.call_one(1)
        second = c.echo.call_one(2)
        result.extend([first._direct, first.get(timeout=TIMEOUT_S), second._direct, second.get(timeout=TIMEOUT_S)])

    t = threading.Thread(target=run)
    t.start()
    t.join(TIMEOUT_S)
    assert result[0] is None and result[1] == 1
    assert result[2] is not None and result[3] == 2


def test_an_async_actors_answer_to_a_direct_call_takes_the_shared_link_and_arrives(procs: ProcMesh) -> None:
    w = procs.spawn("async", AsyncWorker)
    for _ in range(20):  # the loop thread answers: not the direct link, and get() is woken
        fut = w.work.call_one(0.0)
        assert fut.get(timeout=TIMEOUT_S) == 1
    assert fut._direct is not None


def test_a_port_message_sent_before_the_answer_arrives_before_it(procs: ProcMesh) -> None:
    s = procs.spawn("ports", PortSender)
    port, receiver = Channel[int].open()
    s.send_then_answer.call_one(port, -1).get(timeout=TIMEOUT_S)
    receiver.recv().get(timeout=TIMEOUT_S)
    for i in range(100):
        fut = s.send_then_answer.call_one(port, i)
        assert fut._direct is not None
        assert fut.get(timeout=TIMEOUT_S) == i
        got = receiver.recv()  # the port message travelled ahead of the answer: already here
        assert got.done() and got.get(timeout=0) == i
    (link,) = [d for d in _direct_links() if not d.handed]
    assert link.delivered >= 200  # both the port messages and the answers came on the direct link


def test_broadcasts_on_the_shared_link_are_handled_before_a_direct_call(counter: Any) -> None:
    for n in range(1, 6):
        for _ in range(200):
            counter.incr.broadcast()
        assert counter.value.call_one().get(timeout=TIMEOUT_S) == 200 * n


def test_a_direct_future_awaited_in_async_code_completes(counter: Any) -> None:
    fut = counter.echo.call_one("x")

    async def main() -> Any:
        return await asyncio.wait_for(_await(fut), TIMEOUT_S)

    assert asyncio.run(main()) == "x"
    assert counter.echo.call_one("y").get(timeout=TIMEOUT_S) == "y"


async def _await(fut: Any) -> Any:
    return await fut


def test_a_direct_future_polled_with_done_completes(counter: Any) -> None:
    fut = counter.echo.call_one(7)
    deadline = time.monotonic() + TIMEOUT_S
    while not fut.done():
        assert time.monotonic() < deadline, "done() never became true"
        time.sleep(0.001)
    assert fut.get(timeout=0) == 7


def test_a_done_callback_on_a_direct_future_runs(counter: Any) -> None:
    got = threading.Event()
    fut = counter.echo.call_one(3)
    fut.add_done_callback(lambda f: got.set())
    assert got.wait(TIMEOUT_S)
    assert fut.get(timeout=0) == 3


def test_a_direct_future_waited_on_by_another_thread_completes(counter: Any) -> None:
    fut = counter.echo.call_one(5)
    out: list[Any] = []
    t = threading.Thread(target=lambda: out.append(fut.get(timeout=TIMEOUT_S)))
    t.start()
    t.join(TIMEOUT_S)
    assert out == [5]


def test_futures_collected_first_then_waited_on_all_complete_in_order(counter: Any) -> None:
    futs = [counter.echo.call_one(i) for i in range(2000)]
    assert [f.get(timeout=TIMEOUT_S) for f in reversed(futs)] == list(reversed(range(2000)))


def test_a_get_that_times_out_leaves_the_future_usable(counter: Any) -> None:
    fut = counter.sleep.call_one(0.5)
    t0 = time.monotonic()
    with pytest.raises(CallTimeout):
        fut.get(timeout=0.1)
    assert time.monotonic() - t0 < 0.45
    assert fut.get(timeout=TIMEOUT_S) == 0.5


def test_an_endpoint_timeout_fails_a_blocked_get(counter: Any) -> None:
    t0 = time.monotonic()
    with pytest.raises(CallTimeout):
        counter.sleep.with_timeout(0.2).call_one(2.0).get(timeout=TIMEOUT_S)
    assert time.monotonic() - t0 < 1.5


def test_a_killed_proc_fails_a_blocked_get_at_once(counter: Any) -> None:
    pid = counter.pid.call_one().get(timeout=TIMEOUT_S)
    fut = counter.sleep.call_one(30.0)
    threading.Timer(0.2, os.kill, (pid, signal.SIGKILL)).start()
    t0 = time.monotonic()
    with pytest.raises(SupervisionError):
        fut.get(timeout=TIMEOUT_S)
    assert time.monotonic() - t0 < 3.0


def test_threads_calling_at_once_each_get_their_own_results(counter: Any) -> None:
    errors: list[BaseException] = []

    def run(k: int) -> None:
        try:
            for i in range(200):
                assert counter.echo.call_one((k, i)).get(timeout=TIMEOUT_S) == (k, i)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT_S * 3)
    assert not errors
    assert not any(t.is_alive() for t in threads)
