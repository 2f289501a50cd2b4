"""Actor endpoints and tensor handles on a {"hosts": 2, "gpus": 2} mesh of real procs:
``ep.rref(...)`` (stateless and stateful), its ordering with tensor ops, handles passed to
``call`` / ``call_one``, and failures that poison. Every result is checked against a local
recomputation from fetched inputs."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

import monarch  # noqa: E402
from monarch.actor import Actor, ActorError, endpoint  # noqa: E402
from monarch.tensor import TensorOpError  # noqa: E402
from monarch.testing import proc_mesh  # noqa: E402

WAIT_S = 60.0
POINTS = [{"hosts": h, "gpus": g} for h in range(2) for g in range(2)]


class Accumulator(Actor):
    """Keeps a running sum of the tensors it is given (state across rref calls)."""

    def __init__(self) -> None:
        self.total: torch.Tensor | None = None
        self.seen: list[float] = []

    @endpoint(propagate=lambda t: (t + t, t.sum()))
    def double_and_sum(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return t + t, t.sum()

    @endpoint(propagate=lambda t: t.clone())
    def add(self, t: torch.Tensor) -> torch.Tensor:
        self.total = t.clone() if self.total is None else self.total + t
        return self.total.clone()

    @endpoint(propagate="inspect")
    def bump(self, t: torch.Tensor) -> None:
        t.add_(100)  # in place, on the rank's own tensor

    @endpoint(propagate=lambda t: t)
    def fail_on_gpu1(self, t: torch.Tensor) -> torch.Tensor:
        from monarch.actor import context

        if context().actor_instance.rank["gpus"] == 1:
            raise ValueError("boom on gpus=1")
        return t * 2

    @endpoint
    def total_of(self, t: torch.Tensor) -> float:
        self.seen.append(float(t.sum()))
        return float(t.sum())

    @endpoint
    def no_propagate(self, t: torch.Tensor) -> torch.Tensor:
        return t


@pytest.fixture(scope="module")
def procs():
    with proc_mesh({"hosts": 2, "gpus": 2}, timeout_s=30.0) as p:
        yield p


@pytest.fixture(scope="module")
def acc(procs):
    return procs.spawn("acc", Accumulator)


def fetch(obj, **coords):
    return monarch.fetch_shard(obj, **coords).get(WAIT_S)


def test_rref_runs_on_each_ranks_local_tensor_and_returns_handles(procs, acc) -> None:
    with procs.activate():
        t = torch.rand(3, 4) + procs.rank_tensor(("hosts", "gpus"))
        d, s = acc.double_and_sum.rref(t)
        after = d * 3  # an op on the rref's result, issued after it
    assert isinstance(d, monarch.Tensor) and isinstance(s, monarch.Tensor)
    assert d.shape == (3, 4) and s.shape == () and d.dtype == torch.float32
    for pt in POINTS:
        vt, vd, vs, va = fetch((t, d, s, after), **pt)
        assert (
            torch.allclose(vd, vt + vt)
            and torch.allclose(vs, vt.sum())
            and torch.allclose(va, (vt + vt) * 3)
        )
        assert bool((vt >= pt["hosts"] * 2 + pt["gpus"]).all())


def test_stateful_rref_and_ordering_with_ops(procs) -> None:
    acc2 = procs.spawn("acc2", Accumulator)
    with procs.activate():
        x = torch.ones(2, 2) * (procs.rank_tensor("gpus") + 1)
        r1 = acc2.add.rref(x)  # total = x
        x.mul_(10)  # an op between rrefs: the next rref must see it
        r2 = acc2.add.rref(x)  # total = x + 10x
        acc2.bump.rref(x)  # in place on the rank's tensor: x = 10x + 100
        y = x + 1  # must see the bump
    for pt in POINTS:
        base = torch.ones(2, 2) * (pt["gpus"] + 1)
        v1, v2, vx, vy = fetch((r1, r2, x, y), **pt)
        assert torch.equal(v1, base)
        assert torch.equal(v2, base + base * 10)
        assert torch.equal(vx, base * 10 + 100)
        assert torch.equal(vy, base * 10 + 101)


def test_handles_passed_to_call_and_call_one_arrive_as_the_local_tensor(procs, acc) -> None:
    with procs.activate():
        t = torch.arange(4, dtype=torch.float32) + procs.rank_tensor(("hosts", "gpus"))
        vm = acc.total_of.call(t).get(WAIT_S)
        one = acc.slice(hosts=1, gpus=0).total_of.call_one(t).get(WAIT_S)
    got = {(p["hosts"], p["gpus"]): v for p, v in vm.items()}
    for pt in POINTS:
        local = fetch(t, **pt)
        assert got[(pt["hosts"], pt["gpus"])] == pytest.approx(float(local.sum()))
    assert one == pytest.approx(float(fetch(t, hosts=1, gpus=0).sum()))


def test_a_failing_rref_poisons_its_result_on_that_rank_only_and_the_mesh_keeps_working(
    procs, acc
) -> None:
    with procs.activate():
        t = torch.ones(3)
        bad = acc.fail_on_gpu1.rref(t)
        dep = bad + 1
    assert torch.equal(fetch(dep, hosts=0, gpus=0), torch.full((3,), 3.0))
    for h in range(2):
        with pytest.raises(TensorOpError, match="boom on gpus=1") as info:
            fetch(dep, hosts=h, gpus=1)
        assert info.value.rank == {"hosts": h, "gpus": 1}
    with procs.activate():  # afterwards: rref and ops still work
        ok, _ = acc.double_and_sum.rref(t)
    assert torch.equal(fetch(ok, hosts=1, gpus=1), torch.full((3,), 2.0))


def test_a_poisoned_handle_passed_to_call_raises_the_remote_error(procs, acc) -> None:
    with procs.activate():
        bad = acc.fail_on_gpu1.rref(torch.ones(3))  # poisoned on gpus=1 only
        with pytest.raises(ActorError, match="boom on gpus=1") as info:
            acc.slice(hosts=0, gpus=1).total_of.call_one(bad).get(WAIT_S)
        assert isinstance(info.value.exception, TensorOpError)
        assert acc.slice(hosts=0, gpus=0).total_of.call_one(bad).get(WAIT_S) == pytest.approx(6.0)


def test_misuse_gives_clear_errors(procs, acc) -> None:
    with pytest.raises(ValueError, match="active mesh"):
        acc.double_and_sum.rref(1)
    with procs.activate():
        t = torch.ones(2)
        with pytest.raises(ValueError, match="propagate"):
            acc.no_propagate.rref(t)
    import pickle

    with pytest.raises(TypeError, match="argument of an actor endpoint"):
        pickle.dumps(t)
    with pytest.raises(ValueError, match="propagate must be"):
        endpoint(propagate=42)
