"""The Monarch actor API on real processes."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import pytest
from monarch.actor import (
    Accumulator,
    ActorError,
    Channel,
    ProcMesh,
    SupervisionError,
    ValueMesh,
    this_host,
    this_proc,
)
from monarch.testing import proc_mesh

from tests.runtime.actors import AsyncWorker, Caller, Counter, Mixed, Sender, Seq


# Every test gets its own procs and its own counters (each starting at 10), so no test sees
# state another test left behind and every value can be asserted exactly.
@pytest.fixture
def procs() -> Iterator[ProcMesh]:
    with proc_mesh({"hosts": 2, "gpus": 2}) as p:
        yield p


@pytest.fixture
def counters(procs: ProcMesh) -> Any:
    return procs.spawn("counters", Counter, 10)


def test_call_returns_value_mesh_shaped_like_the_mesh(counters: Any) -> None:
    vm = counters.value.call().get(timeout=10)
    assert isinstance(vm, ValueMesh)
    assert dict(vm.extent) == {"hosts": 2, "gpus": 2}
    assert list(vm.values()) == [10, 10, 10, 10]


def test_every_actor_runs_in_its_own_os_process(counters: Any) -> None:
    pids = list(counters.pid.call().get(timeout=10).values())
    assert len(set(pids)) == 4 and os.getpid() not in pids


def test_call_one_requires_exactly_one_actor(counters: Any) -> None:
    with pytest.raises(ValueError, match="exactly one actor"):
        counters.value.call_one()
    assert counters.slice(hosts=1, gpus=0).value.call_one().get(timeout=10) == 10


def test_arguments_are_checked_before_anything_is_sent(counters: Any) -> None:
    with pytest.raises(TypeError, match="incr"):
        counters.incr.broadcast(1, 2, 3)
    with pytest.raises(TypeError):
        counters.slice(hosts=0, gpus=0).echo.call_one()


def test_message_rank_is_position_in_slice_and_rank_is_spawn_point(counters: Any) -> None:
    vm = counters.slice(gpus=1).where.call().get(timeout=10)
    rows = list(vm.values())
    assert [r[0] for r in rows] == [1, 3]  # spawn ranks
    assert [r[1] for r in rows] == [0, 1]  # positions in the slice
    assert rows[1][2] == {"hosts": 1}
    assert rows[1][3] == {"hosts": 1, "gpus": 1}


def test_broadcast_then_call_sees_all_broadcasts_in_order(procs: ProcMesh) -> None:
    c = procs.spawn("order", Counter)
    for i in range(200):
        c.record.broadcast(i)
    hist = c.history.call().get(timeout=20)
    for h in hist.values():
        assert h == list(range(200))


def test_endpoint_error_comes_back_as_actor_error_and_actor_keeps_serving(counters: Any) -> None:
    one = counters.slice(hosts=0, gpus=1)
    with pytest.raises(ActorError) as info:
        one.boom.call_one("no good").get(timeout=10)
    assert isinstance(info.value.exception, ValueError)
    assert "no good" in str(info.value) and "Traceback" in str(info.value)
    assert one.echo.call_one(5).get(timeout=10) == 5


def test_choose_calls_one_actor(counters: Any) -> None:
    assert counters.echo.choose("x").get(timeout=10) == "x"


def test_stream_yields_every_rank_and_generator_items(counters: Any) -> None:
    got = sorted(f.get() for f in counters.echo.stream(3))
    assert got == [3, 3, 3, 3]
    items = sorted(f.get() for f in counters.count_to.stream(3))
    assert items == [0] * 4 + [1] * 4 + [2] * 4


def test_explicit_response_port_answered_from_a_thread(counters: Any) -> None:
    assert counters.slice(hosts=0, gpus=0).later.call_one("hi").get(timeout=10) == "HI"


def test_get_inside_a_sync_endpoint_works_actor_to_actor(procs: ProcMesh, counters: Any) -> None:
    counters.slice(hosts=1, gpus=1).incr.call_one(5).get(timeout=10)
    callers = procs.spawn("callers", Caller, counters)
    vm = callers.ask.call().get(timeout=20)
    # each caller asked the counter at its own point: only rank 3's was incremented
    assert list(vm.values()) == [110, 110, 110, 115]


def test_channel_ports_travel_to_actors(counters: Any) -> None:
    from monarch.actor import send

    port, receiver = Channel.open()
    send(counters.echo, ("ping",), {}, port=port)
    got = [receiver.recv().get(timeout=10) for _ in range(4)]
    assert got == ["ping"] * 4


def test_accumulator_folds_results(counters: Any) -> None:
    total = Accumulator(counters.echo, 0, lambda acc, v: acc + v).accumulate(2).get(timeout=10)
    assert total == 8


def test_async_endpoints_run_one_message_at_a_time(procs: ProcMesh) -> None:
    w = procs.slice(hosts=0, gpus=0).spawn("async", AsyncWorker)
    futs = [w.work.call_one(0.02) for _ in range(5)]
    assert max(f.get(timeout=10) for f in futs) == 1
    assert sorted(f.get() for f in w.ticks.stream(3)) == [0, 1, 2]


def test_different_actors_run_in_parallel(procs: ProcMesh) -> None:
    c = procs.spawn("sleepers", Counter)
    t0 = time.monotonic()
    c.sleep.call(0.5).get(timeout=10)
    assert time.monotonic() - t0 < 1.5


def test_mixing_sync_and_async_endpoints_is_rejected_at_spawn_with_a_value_error(procs: ProcMesh) -> None:
    with pytest.raises(ValueError, match="mixes both async and sync endpoints") as info:
        procs.spawn("mixed", Mixed)
    assert isinstance(info.value, TypeError)  # also a class-definition error, as before


def test_large_tensor_round_trip_keeps_bytes(counters: Any) -> None:
    torch = pytest.importorskip("torch")
    t = torch.arange(4 * 1024 * 1024, dtype=torch.float32)  # 16 MiB
    back = counters.slice(hosts=0, gpus=0).echo.call_one(t).get(timeout=30)
    assert torch.equal(back, t)
    blob = os.urandom(1 << 20)
    assert counters.slice(hosts=1, gpus=1).echo.call_one(blob).get(timeout=30) == blob


def test_lambdas_and_main_style_closures_travel_by_value(counters: Any) -> None:
    k = 7
    f = counters.slice(hosts=0, gpus=0).echo.call_one(lambda x: x * k).get(timeout=10)
    assert f(6) == 42


def test_per_sender_fifo_across_call_one_and_broadcast_from_actors(procs: ProcMesh) -> None:
    target = procs.slice(hosts=0, gpus=0).spawn("seq", Seq)
    senders = procs.spawn("senders", Sender, target)
    results = list(senders.blast.call(300).get(timeout=60).values())
    assert results == [(300, True)] * 4


def test_stopped_mesh_raises_supervision_error(procs: ProcMesh) -> None:
    c = procs.spawn("stopme", Counter)
    assert list(c.value.call().get(timeout=10).values()) == [0, 0, 0, 0]
    c.stop().get(timeout=10)
    with pytest.raises(SupervisionError):
        c.value.call().get(timeout=10)


def test_actors_in_the_client_process_with_this_proc() -> None:
    local = this_proc().spawn("local", Counter, 3)
    assert local.value.call_one().get(timeout=10) == 3


def test_spawn_on_this_host_and_stop_leaves_no_process() -> None:
    p = this_host().spawn_procs(per_host={"gpus": 2})
    c = p.spawn("c", Counter)
    pids = list(c.pid.call().get(timeout=10).values())
    p.stop().get(timeout=10)
    for pid in pids:
        assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"
