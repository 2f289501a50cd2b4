"""A proc SIGKILLed during a collective of the tensor engine (issue 13 §4), on a
{"hosts": 2, "gpus": 2} mesh of real procs.

One rank is held inside a remote function (it reports its pid through a channel, then waits)
while the others have entered the reduce after it and block in gloo; the test SIGKILLs the held
rank. Then: the survivors of its group fail within the group timeout (``tensor_collective_timeout_s``)
with a ``TensorOpError`` naming their rank and the collective; the killed rank's results raise
``SupervisionError`` naming it and the signal; groups without the dead rank keep their results;
the next op on the mesh raises ``SupervisionError``; and fresh groups reduce again, both on a
slice of the surviving procs and on a new proc mesh.
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time

import pytest

torch = pytest.importorskip("torch")

import monarch  # noqa: E402
from monarch.actor import Channel, SupervisionError  # noqa: E402
from monarch.config import configured  # noqa: E402
from monarch.tensor import TensorOpError  # noqa: E402
from monarch.testing import proc_mesh  # noqa: E402

TIMEOUT_S = 6.0  # the group timeout the tests configure
WAIT_S = 60.0
VICTIM = {"hosts": 1, "gpus": 1}  # flat rank 3
VICTIM_RANK = 3


@pytest.fixture
def procs():
    with proc_mesh({"hosts": 2, "gpus": 2}, timeout_s=30.0) as p:
        yield p


def hold_one_rank(port, rank, victim):
    """Remote function: the victim reports its pid and waits (to be SIGKILLed); the other ranks
    return at once and go on into the collective issued after this call."""
    if int(rank) == victim:
        port.send(os.getpid())
        threading.Event().wait(WAIT_S)  # held until the test kills this proc
    return rank.to(torch.float32) + 1


def _propagate(port, rank, victim):
    return torch.empty((), dtype=torch.float32)


def _kill_mid_collective(procs, dims, *, warm):
    """Issue ``hold -> reduce(dims)`` (after a first reduce when ``warm``: the group is then
    formed, so the kill lands inside gloo's all_reduce, not in its rendezvous), SIGKILL the held
    rank; returns ``(inputs, result, victim_pid, kill_time)``."""
    with configured(tensor_collective_timeout_s=TIMEOUT_S):
        if warm:
            with procs.activate():
                first = torch.ones(4).reduce(dims, "sum")
            assert torch.equal(
                monarch.fetch_shard(first).get(WAIT_S),
                torch.full((4,), 4.0 if len(dims) == 2 else 2.0),
            )
        port, started = Channel[int].open()
        with procs.activate():
            rank = procs.rank_tensor(("hosts", "gpus"))
            held = monarch.remote(hold_one_rank, propagate=_propagate)(port, rank, VICTIM_RANK)
            out = held.reduce(dims, "sum")
    pid = started.recv().get(timeout=WAIT_S)
    t0 = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    return held, out, pid, t0


def _check_survivor(out, point, t0, limit_s):
    with pytest.raises(TensorOpError) as info:
        monarch.fetch_shard(out, **point).get(WAIT_S)
    elapsed = time.monotonic() - t0
    err = info.value
    assert err.rank == point, err
    assert err.op.startswith("reduce("), err
    assert elapsed < limit_s, f"the survivor {point} failed {elapsed:.2f} s after the kill"
    return err


def _check_victim(out, pid):
    # the killed rank's results: the supervision error names its actor (rank 3), the signal
    # and its pid, at once
    with pytest.raises(SupervisionError) as info:
        monarch.fetch_shard(out, **VICTIM).get(WAIT_S)
    text = str(info.value)
    assert re.search(r"tensor_engine(\[3\]|\{'hosts': 1/2, 'gpus': 1/2\})", text), text
    assert "killed by signal 9" in text and f"pid {pid}" in text, text


def _check_mesh_refuses_new_ops(procs):
    with pytest.raises(SupervisionError, match=r"(?s)tensor_engine.*killed by signal 9"):
        with procs.activate():
            torch.ones(1)  # sent when activate() exits: the mesh has lost a rank


def _check_fresh_groups_reduce(procs):
    # the surviving procs of host 0, as a mesh of their own: new workers, new groups
    survivors = procs.slice(hosts=0)
    with survivors.activate():
        x = torch.arange(3, dtype=torch.float32) + survivors.rank_tensor("gpus")
        s = x.reduce("gpus", "sum")
    xs = [monarch.fetch_shard(x, gpus=g).get(WAIT_S) for g in range(2)]
    assert torch.equal(monarch.fetch_shard(s, gpus=1).get(WAIT_S), xs[0] + xs[1])
    # a new proc mesh of the full shape
    with proc_mesh({"hosts": 2, "gpus": 2}, timeout_s=30.0) as fresh:
        with fresh.activate():
            y = torch.ones(2) + fresh.rank_tensor(("hosts", "gpus"))
            t = y.reduce(("hosts", "gpus"), "sum")
        assert torch.equal(
            monarch.fetch_shard(t, hosts=1, gpus=1).get(WAIT_S), torch.full((2,), 10.0)
        )


@pytest.mark.parametrize("dims", [("gpus",), ("hosts", "gpus")])
def test_sigkill_inside_a_collective_fails_the_group_within_the_timeout_then_new_groups_reduce(
    procs, dims
) -> None:
    held, out, pid, t0 = _kill_mid_collective(procs, dims, warm=True)
    points = [{"hosts": h, "gpus": g} for h in range(2) for g in range(2)]
    group = [
        p for p in points if p != VICTIM and all(p[d] == VICTIM[d] for d in VICTIM if d not in dims)
    ]
    for point in group:  # gloo sees the dead peer's socket close: well inside the timeout
        _check_survivor(out, point, t0, TIMEOUT_S)
    _check_victim(out, pid)
    if dims == ("gpus",):  # host 0's group did not include the dead rank: its result is whole
        ins = [monarch.fetch_shard(held, hosts=0, gpus=g).get(WAIT_S) for g in range(2)]
        assert torch.equal(monarch.fetch_shard(out, hosts=0, gpus=1).get(WAIT_S), ins[0] + ins[1])
    _check_mesh_refuses_new_ops(procs)
    _check_fresh_groups_reduce(procs)


def test_sigkill_before_a_group_forms_fails_its_rendezvous_at_the_timeout_then_new_groups_reduce(
    procs,
) -> None:
    # the group's first use: the survivor waits in the rendezvous store for the dead rank's
    # address until the group timeout, then fails (gloo cannot see a peer it never connected to)
    _, out, pid, t0 = _kill_mid_collective(procs, ("gpus",), warm=False)
    err = _check_survivor(
        out, {"hosts": 1, "gpus": 0}, t0, TIMEOUT_S + 20.0
    )  # slack: a loaded machine
    assert f"timeout after {int(TIMEOUT_S * 1000)}ms" in err.error, (
        err
    )  # the configured timeout reached gloo
    _check_victim(out, pid)
    _check_mesh_refuses_new_ops(procs)
    _check_fresh_groups_reduce(procs)
