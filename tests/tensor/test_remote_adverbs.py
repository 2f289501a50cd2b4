"""The endpoint adverbs of ``monarch.remote`` functions (Monarch's ``Remote`` implements its
``Endpoint`` protocol; its getting-started guide runs ``check_memory.call().get()`` inside
``activate()`` and ``send(check_memory, args=(), kwargs={}, port=port)``), on a
{"hosts": 2, "gpus": 2} mesh of real procs. Each value is checked against the rank's own
tensors, fetched separately."""

from __future__ import annotations

import os

import pytest

torch = pytest.importorskip("torch")

import monarch  # noqa: E402
from monarch.actor import ActorError, Channel, send  # noqa: E402
from monarch.testing import proc_mesh  # noqa: E402

WAIT_S = 60.0
POINTS = [{"hosts": h, "gpus": g} for h in range(2) for g in range(2)]


@pytest.fixture(scope="module")
def procs():
    with proc_mesh({"hosts": 2, "gpus": 2}, timeout_s=30.0) as p:
        yield p


@monarch.remote
def where_and_sum(t, extra=0):
    """This rank's pid and ``t.sum() + extra`` as a Python float (not a tensor)."""
    return os.getpid(), float(t.sum()) + extra


@monarch.remote
def pid():
    return os.getpid()


@monarch.remote
def fails_on_rank(rank):
    if int(rank) == 2:
        raise ValueError("rank 2 refuses")
    return int(rank)


def _ranks(vm):
    return [v for _, v in sorted(vm.items(), key=lambda kv: kv[0].rank)]


def test_call_runs_on_every_rank_with_handles_as_local_tensors_after_earlier_ops(procs) -> None:
    with procs.activate():
        flat = procs.rank_tensor(("hosts", "gpus"))
        t = torch.ones(3) * (flat + 1)  # issued before the call: it must have run first
        vm = where_and_sum.call(t, extra=0.5).get(WAIT_S)
    got = _ranks(vm)
    assert [s for _, s in got] == [3.0 * (r + 1) + 0.5 for r in range(4)]
    assert len({p for p, _ in got}) == 4  # four procs, none of them this client
    assert os.getpid() not in {p for p, _ in got}
    assert dict(vm.extent.items()) == {"hosts": 2, "gpus": 2}


def test_call_one_choose_and_stream(procs) -> None:
    with procs.activate():
        pids = set(_ranks(pid.call().get(WAIT_S)))
        with pytest.raises(ValueError, match="exactly one"):
            pid.call_one()
        assert pid.choose().get(WAIT_S) in pids
        assert {f.get(WAIT_S) for f in pid.stream()} == pids
    one = procs.slice(hosts=1, gpus=0)
    with one.activate():
        assert pid.call_one().get(WAIT_S) in pids


def test_send_to_a_port_delivers_one_value_per_rank(procs) -> None:
    port, recv = Channel.open()
    with procs.activate():
        expected = set(_ranks(pid.call().get(WAIT_S)))
        send(pid, args=(), kwargs={}, port=port)
    assert {recv.recv().get(WAIT_S) for _ in POINTS} == expected


def test_a_rank_that_raises_fails_the_call_and_the_mesh_keeps_working(procs) -> None:
    with procs.activate():
        flat = procs.rank_tensor(("hosts", "gpus"))
        with pytest.raises(ActorError, match="rank 2 refuses"):
            fails_on_rank.call(flat).get(WAIT_S)
        assert sorted(_ranks(fails_on_rank.call(flat % 2).get(WAIT_S))) == [0, 0, 1, 1]


def test_calling_without_an_active_mesh_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="requires an active mesh"):
        pid.call()
