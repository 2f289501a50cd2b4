"""Seeding the ranks' random generators (issue 13 §1), on a {"hosts": 2, "gpus": 2} mesh of
real procs: ``torch.manual_seed`` inside ``activate()`` seeds only the client (as in Monarch); a
remote function with no tensor result seeds each rank, in op order, from a rank tensor. Every
rank's draws are checked against a local generator seeded the same way."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

import monarch  # noqa: E402
from monarch.testing import proc_mesh  # noqa: E402

WAIT_S = 60.0
POINTS = [{"hosts": h, "gpus": g} for h in range(2) for g in range(2)]
BASE = 1234


@pytest.fixture(scope="module")
def procs():
    with proc_mesh({"hosts": 2, "gpus": 2}, timeout_s=30.0) as p:
        yield p


@monarch.remote(propagate=lambda seed: None)
def manual_seed(seed):
    """Seed this rank's default generator from its element of ``seed`` (a 0-d int64 handle)."""
    torch.manual_seed(int(seed))


@monarch.remote(propagate="inspect")
def manual_seed_xor(seed, rank):
    """Monarch's ``set_manual_seed_remote`` pattern (``propagate="inspect"``): ``seed ^ rank``."""
    torch.manual_seed(seed ^ int(rank))


def _expected(seed: int, n: int) -> torch.Tensor:
    return torch.rand(n, generator=torch.Generator().manual_seed(seed))


def _fetch_all(t):
    return [monarch.fetch_shard(t, **pt).get(WAIT_S) for pt in POINTS]


def test_a_remote_function_seeds_each_rank_from_its_rank_in_op_order(procs) -> None:
    with procs.activate():
        flat = procs.rank_tensor(("hosts", "gpus"))
        assert manual_seed(BASE + flat) is None  # no tensor result: nothing to hand back
        a = torch.rand(5)
        manual_seed(BASE + flat)  # seeding again, after a's draw: b repeats a's values
        b = torch.rand(5)
    got_a, got_b = _fetch_all(a), _fetch_all(b)
    for i, (va, vb) in enumerate(zip(got_a, got_b)):
        assert torch.equal(va, _expected(BASE + i, 5)), f"rank {i}"
        assert torch.equal(vb, va)
    assert len({tuple(v.tolist()) for v in got_a}) == len(POINTS)  # every rank draws its own


def test_monarchs_inspect_propagation_runs_the_function_for_its_effect(procs) -> None:
    with procs.activate():
        manual_seed_xor(BASE, procs.rank_tensor(("hosts", "gpus")))
        c = torch.rand(3)
    for i, vc in enumerate(_fetch_all(c)):
        assert torch.equal(vc, _expected(BASE ^ i, 3)), f"rank {i}"


def test_torch_manual_seed_inside_activate_seeds_the_client_only(procs) -> None:
    # as in Monarch: torch.manual_seed is not a tensor op, so it runs on the client
    with procs.activate():
        flat = procs.rank_tensor(("hosts", "gpus"))
        manual_seed(BASE + flat)
        torch.manual_seed(7)
        d = torch.rand(4)
    assert torch.equal(torch.rand(4), _expected(7, 4))  # the client's generator was seeded
    for i, vd in enumerate(_fetch_all(d)):
        assert torch.equal(vd, _expected(BASE + i, 4)), f"rank {i}"
