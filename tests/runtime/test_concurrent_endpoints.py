"""``@concurrent_endpoint``: bodies run as tasks, start in order, are cancelled before cleanup."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
from monarch.actor import Actor, ActorError, SupervisionError, concurrent_endpoint, endpoint
from monarch.testing import proc_mesh

from tests.runtime.feature_actors import Latch

T = 30.0


@pytest.fixture
def latch(tmp_path: Any) -> Iterator[tuple[Any, str]]:
    log = str(tmp_path / "log")
    with proc_mesh({"gpus": 1}) as procs:
        yield procs.spawn("latch", Latch, log), log


def test_a_concurrent_body_lets_the_actor_handle_the_next_message(latch: tuple[Any, str]) -> None:
    mesh, _ = latch
    held = mesh.hold.call_one(7)
    # ``open_when_held`` can only run while ``hold`` is suspended: the actor did not wait for it
    assert mesh.open_when_held.call_one().get(T) == "opened"
    assert held.get(T) == 7


def test_concurrent_bodies_start_in_the_order_their_messages_were_sent(latch: tuple[Any, str]) -> None:
    mesh, _ = latch
    futures = [mesh.hold.call_one(i) for i in range(5)]
    mesh.open_when_held.call_one().get(T)
    assert [f.get(T) for f in futures] == list(range(5))
    assert mesh.start_order.call_one().get(T) == list(range(5))


def test_an_exception_in_a_concurrent_body_reaches_the_caller_and_the_actor_survives(latch: tuple[Any, str]) -> None:
    mesh, _ = latch
    with pytest.raises(ActorError, match="concurrent failure"):
        mesh.fails.call_one().get(T)
    assert mesh.ping.call_one().get(T) == "pong"


def test_an_exception_escaping_an_explicit_port_concurrent_body_fails_the_actor(latch: tuple[Any, str]) -> None:
    mesh, _ = latch
    with pytest.raises(SupervisionError):
        mesh.fails_on_port.call_one().get(T)
    with pytest.raises(SupervisionError):
        mesh.ping.call_one().get(T)


def test_running_bodies_are_cancelled_before_cleanup_when_the_proc_stops(tmp_path: Any) -> None:
    log = str(tmp_path / "log")
    with proc_mesh({"gpus": 1}) as procs:
        mesh = procs.spawn("latch", Latch, log)
        assert mesh.forever.call_one().get(T) == "running"
    with open(log) as f:
        assert f.read().splitlines() == ["body cancelled", "cleanup"]
    assert os.path.exists(log)


def test_concurrent_endpoint_rejects_a_sync_method() -> None:
    with pytest.raises(ValueError, match="only wrap async"):

        class Sync(Actor):
            @concurrent_endpoint
            def f(self) -> None:
                pass


def test_concurrent_endpoint_rejects_wrapping_an_endpoint() -> None:
    with pytest.raises(ValueError, match="does not wrap @endpoint"):

        class Twice(Actor):
            @concurrent_endpoint
            @endpoint
            async def f(self) -> None:
                pass


def test_a_concurrent_endpoint_answers_through_a_response_port() -> None:
    assert Latch.hold._explicit_response_port
    assert not Latch.ping._explicit_response_port
