"""ActorInstance: the actor failure policy and the mailbox, on in-memory runtimes.

Reply-port call raising -> ActorError to the caller, the actor survives; no reply port (broadcast)
-> the actor fails and its owner is told; SystemExit -> the whole proc fails (any other
BaseException fails only its actor: test_supervision_semantics.py).
"""

from __future__ import annotations

import threading

import pytest
from monarch._core.errors import ActorError, SupervisionError
from monarch._mesh.supervision import fault_hooks
from monarch.actor import Actor, endpoint
from monarch.testing import memory_runtimes

TIMEOUT_S = 5.0


class Worker(Actor):
    def __init__(self) -> None:
        self.n = 0

    @endpoint
    def incr(self) -> int:
        self.n += 1
        return self.n

    @endpoint
    def boom(self, msg: str) -> int:
        raise ValueError(msg)

    @endpoint
    def exit(self) -> None:
        raise SystemExit(3)


class AsyncWorker(Actor):
    def __init__(self) -> None:
        self.n = 0

    @endpoint
    async def incr(self) -> int:
        self.n += 1
        return self.n

    @endpoint
    async def boom(self, msg: str) -> int:
        raise ValueError(msg)


class BadInit(Actor):
    def __init__(self) -> None:
        raise RuntimeError("no config")

    @endpoint
    def ping(self) -> int:
        return 1


class Failures:
    """Captures failures that reach the root's unhandled-fault hook."""

    def __init__(self) -> None:
        self.seen: list[object] = []
        self.event = threading.Event()

    def __call__(self, failure: object) -> None:
        self.seen.append(failure)
        self.event.set()


@pytest.fixture
def unhandled(monkeypatch):
    hook = Failures()
    monkeypatch.setattr(fault_hooks, "unhandled", hook)
    return hook


@pytest.fixture
def rts():
    with memory_runtimes(1) as r:
        yield r


@pytest.mark.parametrize("cls", [Worker, AsyncWorker])
def test_a_handler_exception_reaches_the_caller_as_actor_error_and_the_actor_keeps_serving(rts, unhandled, cls):
    ref = rts.spawn("w", cls)
    assert rts.call(ref, "incr").get(TIMEOUT_S) == 1
    with pytest.raises(ActorError, match="kaput") as info:
        rts.call(ref, "boom", "kaput").get(TIMEOUT_S)
    assert isinstance(info.value.exception, ValueError)
    assert rts.call(ref, "incr").get(TIMEOUT_S) == 2  # same actor, state kept
    assert rts.actor(ref).state == "running"
    assert not unhandled.seen


@pytest.mark.parametrize("cls", [Worker, AsyncWorker])
def test_an_exception_in_a_broadcast_fails_the_actor_and_reports_to_its_owner(rts, unhandled, cls):
    ref = rts.spawn("w", cls)
    rts.broadcast(ref, "boom", "in a broadcast")
    assert unhandled.event.wait(TIMEOUT_S)
    failure = unhandled.seen[0]
    assert failure.mesh_name == "w" and failure.ranks == [0]  # type: ignore[attr-defined]
    assert "ValueError: in a broadcast" in failure.cause  # type: ignore[attr-defined]
    assert "Traceback" in failure.traceback  # type: ignore[attr-defined]
    with pytest.raises(SupervisionError, match=r"have failed:\s+ValueError: in a broadcast"):
        rts.call(ref, "incr").get(TIMEOUT_S)
    assert rts.client.supervisor.unusable(ref, [0]) is not None


def test_an_unknown_endpoint_is_answered_with_type_error_and_does_not_fail_the_actor(rts, unhandled):
    ref = rts.spawn("w", Worker)
    with pytest.raises(ActorError, match="no endpoint 'nope'"):
        rts.call(ref, "nope").get(TIMEOUT_S)
    rts.broadcast(ref, "nope")  # logged and dropped
    assert rts.call(ref, "incr").get(TIMEOUT_S) == 1
    assert not unhandled.seen


def test_an_exception_in_init_fails_the_actor_and_every_call_is_refused(rts, unhandled):
    ref = rts.spawn("bad", BadInit, wait=False)
    assert unhandled.event.wait(TIMEOUT_S)
    assert "RuntimeError: no config (in __init__)" in unhandled.seen[0].cause  # type: ignore[attr-defined]
    with pytest.raises(SupervisionError, match="no config"):
        rts.call(ref, "ping").get(TIMEOUT_S)


def test_a_base_exception_in_a_handler_fails_the_whole_proc(rts, unhandled):
    ref = rts.spawn("w", Worker)
    with pytest.raises(SupervisionError):
        rts.call(ref, "exit").get(TIMEOUT_S)  # the in-flight call is answered, not left hanging
    assert rts.proc_failed.wait(TIMEOUT_S)
    addr = rts.procs[0].router.addr
    assert "SystemExit: 3 (the proc exited)" in rts.proc_failures[addr]
    assert unhandled.event.wait(TIMEOUT_S)  # the owner hears of it
    with pytest.raises(SupervisionError):
        rts.call(ref, "incr").get(TIMEOUT_S)


def test_messages_are_handled_one_at_a_time_in_arrival_order(rts):
    ref = rts.spawn("w", Worker)
    futures = [rts.call(ref, "incr") for _ in range(50)]
    assert [f.get(TIMEOUT_S) for f in futures] == list(range(1, 51))
