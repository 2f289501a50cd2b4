"""The tensor engine's scenarios on CUDA: factories with ``device="cuda"`` (and torch's
``torch.device("cuda")`` context), ops, rank tensors, remote functions, every reduction in every
mode over NCCL groups, poison, rref and handles passed to ``call`` (plain and IDL endpoints);
each rank on ``cuda:LOCAL_RANK``, fetches on the client's CPU, every result checked against a
local recomputation from fetched inputs.

Marked ``gpu``; skipped (with the reason) where ``torch.cuda.is_available()`` is false. NCCL
needs one GPU per rank, so the mesh is ``{"gpus": min(2, GPUs)}``; on a one-GPU machine a
two-rank mesh also checks that NCCL over ranks sharing a GPU is refused with a clear error.
Run them with ``tests/tensor/run_gpu.sh`` (with the NCCL reduce benchmark) or ``pytest -m gpu``.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

import monarch  # noqa: E402
from monarch.actor import Actor, endpoint  # noqa: E402
from monarch.generated.parameter_server import ParameterServer, Versioned  # noqa: E402
from monarch.tensor import TensorOpError  # noqa: E402
from monarch.testing import proc_mesh  # noqa: E402

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available(),
        reason=f"needs a CUDA device: torch.cuda.is_available() is False (torch {torch.__version__})",
    ),
]

WAIT_S = 120.0
N_GPUS = torch.cuda.device_count() if torch.cuda.is_available() else 0
N = min(2, N_GPUS)  # ranks of the NCCL mesh: one GPU each


@pytest.fixture(scope="module")
def procs():
    with proc_mesh({"gpus": N}, timeout_s=60.0) as p:
        yield p


def fetch(obj, **coords):
    return monarch.fetch_shard(obj, **coords).get(WAIT_S)


def _on_cpu(*ts):
    return all(t.device.type == "cpu" for t in ts)


def test_factories_make_tensors_on_each_ranks_own_gpu_and_fetch_copies_to_cpu(procs) -> None:
    @monarch.remote(propagate=lambda t: torch.zeros((), dtype=torch.long))
    def device_index(t):
        return torch.tensor(t.get_device())

    with procs.activate():
        z = torch.zeros(2, 3, device="cuda")
        a = torch.arange(6, dtype=torch.float64, device="cuda")
        r = torch.rand(4, 5, device="cuda")
        with torch.device("cuda"):
            o = torch.ones(3)
        idx = device_index(z)
    assert all(t.device.type == "cuda" for t in (z, a, r, o)) and z.shape == (2, 3)
    for g in range(N):
        vz, va, vr, vo, vi = fetch((z, a, r, o, idx), gpus=g)
        assert _on_cpu(vz, va, vr, vo)
        assert torch.equal(vz, torch.zeros(2, 3)) and torch.equal(vo, torch.ones(3))
        assert torch.equal(va, torch.arange(6, dtype=torch.float64))
        assert bool(((vr >= 0) & (vr < 1)).all())
        assert int(vi) == g % N_GPUS  # cuda:LOCAL_RANK


def test_elementwise_matmul_and_moves_match_a_local_recomputation(procs) -> None:
    with procs.activate():
        t = torch.rand(3, 4, device="cuda") + procs.rank_tensor("gpus").cuda()
        r = t @ t.T
        e = (t * 2 - 1).relu().sum(dim=0)
        back = t.cpu()
        there = back.to("cuda")
        t.mul_(3)
    assert r.device.type == "cuda" and back.device.type == "cpu" and there.device.type == "cuda"
    for g in range(N):
        vt, vr, ve, vb, vth = fetch((t, r, e, back, there), gpus=g)
        base = vt / 3
        assert torch.allclose(vr, base @ base.T, atol=1e-5)
        assert torch.allclose(ve, (base * 2 - 1).relu().sum(dim=0), atol=1e-5)
        assert torch.allclose(vb, base) and torch.allclose(vth, base)  # copies: no mul_


LOCAL = {
    "sum": lambda xs: torch.stack(xs).sum(0),
    "avg": lambda xs: torch.stack(xs).mean(0),
    "product": lambda xs: torch.stack(xs).prod(0),
    "min": lambda xs: torch.stack(xs).min(0).values,
    "max": lambda xs: torch.stack(xs).max(0).values,
    "stack": lambda xs: torch.stack(xs),
}


def _inputs(procs, dtype):
    with procs.activate():
        x = (torch.arange(4, dtype=dtype, device="cuda") + 1) * (
            procs.rank_tensor("gpus") + 2
        ).cuda().to(dtype)
    return x, [fetch(x, gpus=g) for g in range(N)]


@pytest.mark.parametrize("reduction", list(LOCAL))
def test_reduce_over_nccl_matches_a_local_reduction(procs, reduction) -> None:
    x, xs = _inputs(procs, torch.float64)
    out = x.reduce("gpus", reduction)
    assert out.device.type == "cuda" and out.shape == ((N, 4) if reduction == "stack" else (4,))
    want = LOCAL[reduction](xs)
    for g in range(N):
        got = fetch(out, gpus=g)
        assert _on_cpu(got) and torch.allclose(got, want), (reduction, g)


@pytest.mark.parametrize("reduction", ["sum", "max", "stack"])
def test_reduce_with_scatter_over_nccl_is_reduce_scatter_or_all_to_all(procs, reduction) -> None:
    with procs.activate():
        x = (
            torch.arange(3.0 * N, device="cuda").reshape(N, 3)
            * (procs.rank_tensor("gpus") + 1).cuda().float()
        )
    xs = [fetch(x, gpus=g) for g in range(N)]
    out = x.reduce("gpus", reduction, scatter=True)
    for me in range(N):
        if reduction == "stack":
            want = torch.stack([xs[j][me] for j in range(N)])
        else:
            want = LOCAL[reduction]([xs[j][me] for j in range(N)])
        assert torch.allclose(fetch(out, gpus=me), want)


def test_reduce_in_place_and_cpu_and_cuda_reduces_side_by_side(procs) -> None:
    x, xs = _inputs(procs, torch.float32)
    with procs.activate():
        c = x.cpu()
        x.reduce_("gpus", "sum")  # NCCL
        cs = c.reduce("gpus", "sum")  # gloo, same batch
    assert x.device.type == "cuda" and cs.device.type == "cpu"
    for g in range(N):
        assert torch.allclose(fetch(x, gpus=g), LOCAL["sum"](xs))
        assert torch.allclose(fetch(cs, gpus=g), LOCAL["sum"](xs))


def test_bitwise_reductions_are_refused_by_nccl_and_the_mesh_keeps_working(procs) -> None:
    x, _ = _inputs(procs, torch.int64)
    bad = x.reduce("gpus", "band")
    with pytest.raises(TensorOpError, match=r"(?i)band|nccl"):
        fetch(bad, gpus=0)
    ok = x.reduce("gpus", "sum")
    assert fetch(ok, gpus=0).dtype == torch.int64


@pytest.mark.skipif(N < 2, reason="poison across ranks needs two GPUs (one per NCCL rank)")
def test_an_op_failing_on_one_rank_poisons_the_nccl_reduce_of_every_rank(procs) -> None:
    def fail_on_one(t, r):
        if int(r) == 1:
            raise ValueError("boom on this rank")
        return t + 1

    bad = monarch.remote(fail_on_one, propagate=lambda t, r: t)
    with procs.activate():
        y = bad(torch.ones(3, device="cuda"), procs.rank_tensor("gpus"))
        red = y.reduce("gpus", "sum")
        fine = torch.ones(2, device="cuda").reduce("gpus", "sum")
    for g in range(2):
        with pytest.raises(TensorOpError, match=r"boom on this rank|poisoned on group ranks"):
            fetch(red, gpus=g)
        assert torch.equal(fetch(fine, gpus=g), torch.full((2,), 2.0))


class CudaUser(Actor):
    """Gets the rank's CUDA tensors in its endpoints."""

    @endpoint(propagate=lambda t: t.clone())
    def double(self, t: torch.Tensor) -> torch.Tensor:
        assert t.is_cuda
        return t * 2

    @endpoint
    def where(self, t: torch.Tensor) -> tuple[str, int, int]:
        made = torch.zeros(1, device="cuda")  # inside a tensor call: the rank's device is current
        return t.device.type, t.get_device(), made.get_device()


class CudaServer(ParameterServer):
    def __init__(self) -> None:
        self.weights = torch.zeros(4)

    def pull(self) -> Versioned:
        return Versioned(version=0, weights=self.weights)

    def push(self, grads: torch.Tensor, worker: int) -> int:
        self.weights = grads.cpu() * worker
        return grads.get_device()


def test_rref_and_handles_passed_to_calls_arrive_as_the_ranks_cuda_tensors(procs) -> None:
    users = procs.spawn("cuda_users", CudaUser)
    servers = procs.spawn("cuda_servers", CudaServer)
    with procs.activate():
        t = torch.ones(3, device="cuda") * (procs.rank_tensor("gpus") + 1).cuda()
        d = users.double.rref(t)
        places = users.where.call(t).get(WAIT_S)
        devices = servers.push.call(t, 2).get(WAIT_S)  # an IDL endpoint's M.Tensor field
    assert d.device.type == "cuda"
    for g in range(N):
        assert torch.equal(fetch(d, gpus=g), torch.full((3,), 2.0 * (g + 1)))
    assert sorted(places.values()) == sorted(("cuda", g % N_GPUS, g % N_GPUS) for g in range(N))
    assert sorted(devices.values()) == sorted(g % N_GPUS for g in range(N))
    for point, v in servers.pull.call().get(WAIT_S).items():
        assert torch.equal(v.weights, torch.full((3,), 2.0 * (point["gpus"] + 1)))  # grads * worker


@pytest.mark.skipif(N_GPUS != 1, reason="checks ranks sharing the one GPU of the machine")
def test_nccl_over_ranks_sharing_a_gpu_is_refused_clearly() -> None:
    with proc_mesh({"gpus": 2}, timeout_s=60.0) as shared:
        with shared.activate():
            t = torch.ones(2, device="cuda") * shared.rank_tensor("gpus").cuda()
            s = t.reduce("gpus", "sum")
            u = t + 1  # no collective: fine on a shared GPU
        with pytest.raises(TensorOpError, match="NCCL needs one GPU per rank"):
            fetch(s, gpus=0)
        assert torch.equal(fetch(u, gpus=1), torch.full((2,), 2.0))
