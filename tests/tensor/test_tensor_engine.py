"""The tensor engine on a {"hosts": 2, "gpus": 2} mesh of real procs: every result is checked
against a local recomputation from fetched inputs."""

from __future__ import annotations

import gc
import json
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")

import monarch  # noqa: E402
from monarch.tensor import TensorOpError  # noqa: E402
from monarch.tensor._client import client_for  # noqa: E402
from monarch.tensor._tensor import _cache  # noqa: E402
from monarch.testing import proc_mesh  # noqa: E402

WAIT_S = 60.0
POINTS = [{"hosts": h, "gpus": g} for h in range(2) for g in range(2)]


@pytest.fixture(scope="module")
def procs():
    with proc_mesh({"hosts": 2, "gpus": 2}, timeout_s=30.0) as p:
        yield p


def fetch(obj, **coords):
    return monarch.fetch_shard(obj, **coords).get(WAIT_S)


def test_factories_run_on_every_rank_with_shapes_known_on_the_client(procs) -> None:
    with procs.activate():
        z = torch.zeros(2, 3)
        a = torch.arange(6, dtype=torch.float64)
        r = torch.rand(4, 5)
    assert isinstance(z, monarch.Tensor) and z.shape == (2, 3) and z.dtype == torch.float32
    assert a.shape == (6,) and a.dtype == torch.float64
    assert r.shape == (4, 5)
    for pt in POINTS:
        vz, va, vr = fetch((z, a, r), **pt)
        assert torch.equal(vz, torch.zeros(2, 3))
        assert torch.equal(va, torch.arange(6, dtype=torch.float64))
        assert vr.shape == (4, 5) and bool(((vr >= 0) & (vr < 1)).all())


def test_elementwise_and_matmul_match_a_local_recomputation(procs) -> None:
    with procs.activate():
        t = torch.rand(3, 4) + procs.rank_tensor("gpus")
        r = t @ t.T
        e = (t * 2 - 1).relu().sum(dim=0)
        tt = t.T
        t.mul_(3)  # in place: the handle names the result
    assert r.shape == (3, 3) and e.shape == (4,) and tt.shape == (4, 3)
    for pt in POINTS:
        vt, vr, ve, vtt = fetch((t, r, e, tt), **pt)
        base = vt / 3
        assert torch.allclose(vr, base @ base.T)
        assert torch.allclose(ve, (base * 2 - 1).relu().sum(dim=0))
        assert torch.allclose(vtt, vt.T)  # a view: sees the in-place mul
        assert bool((base >= pt["gpus"]).all() and (base < pt["gpus"] + 1).all())


def test_rank_tensors_hold_each_ranks_coordinates(procs) -> None:
    ranks = procs.rank_tensors()
    both = procs.rank_tensor(("hosts", "gpus"))
    assert set(ranks) == {"hosts", "gpus"} and ranks["gpus"].shape == () and ranks["gpus"].dtype == torch.long
    for pt in POINTS:
        h, g, b = fetch((ranks["hosts"], ranks["gpus"], both), **pt)
        assert (int(h), int(g), int(b)) == (pt["hosts"], pt["gpus"], pt["hosts"] * 2 + pt["gpus"])
    with pytest.raises(KeyError):
        procs.rank_tensor("nodes")


def test_remote_functions_run_on_the_ranks_local_tensors(procs) -> None:
    def scale_and_shift(t, k):
        return t * k + 1, t.sum()

    add = monarch.remote("torch.add")
    fn = monarch.remote(scale_and_shift, propagate=lambda t, k: (t, t.sum()))
    with procs.activate():
        x = torch.arange(4.0) + procs.rank_tensor("hosts")
        y = add(x, x)
        a, s = fn(x, 3.0)
    assert y.shape == (4,) and a.shape == (4,) and s.shape == ()
    for pt in POINTS:
        vx, vy, va, vs = fetch((x, y, a, s), **pt)
        assert torch.equal(vy, vx + vx) and torch.equal(va, vx * 3.0 + 1) and torch.equal(vs, vx.sum())
    with pytest.raises(ValueError, match="active mesh"):
        add(torch.ones(1), torch.ones(1))


def test_fetch_shard_keeps_the_pytree_structure(procs) -> None:
    with procs.activate():
        t = torch.ones(2) * procs.rank_tensor("gpus")
        u = torch.full((1,), 7.0)
    got = fetch({"a": [t, 5, (u, "x")], "b": None}, gpus=1)
    assert got["a"][1] == 5 and got["a"][2][1] == "x" and got["b"] is None
    assert torch.equal(got["a"][0], torch.ones(2)) and torch.equal(got["a"][2][0], torch.full((1,), 7.0))
    assert torch.equal(monarch.inspect(t, hosts=1, gpus=1), torch.ones(2))
    assert torch.equal(monarch.inspect(t), torch.zeros(2))  # no coordinates: rank 0


def _inputs(procs, dtype):
    with procs.activate():
        r = procs.rank_tensor(("hosts", "gpus"))
        x = (torch.arange(4, dtype=dtype) + 1) * (r + 2).to(dtype)
    return x, [fetch(x, **pt) for pt in POINTS]


LOCAL = {
    "sum": lambda xs: torch.stack(xs).sum(0),
    "avg": lambda xs: torch.stack(xs).mean(0),
    "product": lambda xs: torch.stack(xs).prod(0),
    "min": lambda xs: torch.stack(xs).min(0).values,
    "max": lambda xs: torch.stack(xs).max(0).values,
    "band": lambda xs: xs[0] & xs[1] if len(xs) == 2 else xs[0] & xs[1] & xs[2] & xs[3],
    "bor": lambda xs: xs[0] | xs[1] if len(xs) == 2 else xs[0] | xs[1] | xs[2] | xs[3],
    "bxor": lambda xs: xs[0] ^ xs[1] if len(xs) == 2 else xs[0] ^ xs[1] ^ xs[2] ^ xs[3],
    "stack": lambda xs: torch.stack(xs),
}


def _groups(dims):
    """The points of each group along ``dims``, in group-rank order."""
    out: dict[tuple, list] = {}
    for i, pt in enumerate(POINTS):
        key = tuple(v for k, v in pt.items() if k not in dims)
        out.setdefault(key, []).append(i)
    return out


@pytest.mark.parametrize("dims", [("gpus",), ("hosts",), ("hosts", "gpus")])
@pytest.mark.parametrize("reduction", list(LOCAL))
def test_reduce_matches_a_local_reduction_of_the_fetched_inputs(procs, reduction, dims) -> None:
    if reduction == "stack" and len(dims) > 1:
        pytest.skip("stack over several dims is invalid (Monarch)")
    dtype = torch.int64 if reduction in ("band", "bor", "bxor") else torch.float64
    x, xs = _inputs(procs, dtype)
    out = x.reduce(dims if len(dims) > 1 else dims[0], reduction)
    g = 4 if len(dims) > 1 else 2
    assert out.shape == ((g, 4) if reduction == "stack" else (4,))
    for members in _groups(dims).values():
        want = LOCAL[reduction]([xs[i] for i in members])
        for i in members:
            assert torch.allclose(fetch(out, **POINTS[i]), want), (reduction, dims, POINTS[i])


@pytest.mark.parametrize("reduction", ["sum", "max", "stack"])
def test_reduce_with_scatter_is_reduce_scatter_or_all_to_all(procs, reduction) -> None:
    with procs.activate():
        r = procs.rank_tensor(("hosts", "gpus"))
        x = torch.arange(6.0).reshape(2, 3) * (r + 1).float()
    xs = [fetch(x, **pt) for pt in POINTS]
    out = x.reduce("gpus", reduction, scatter=True)
    assert out.shape == ((2, 3) if reduction == "stack" else (3,))
    for members in _groups(("gpus",)).values():
        for me, i in enumerate(members):
            if reduction == "stack":
                want = torch.stack([xs[j][me] for j in members])
            else:
                want = LOCAL[reduction]([xs[j][me] for j in members])
            assert torch.allclose(fetch(out, **POINTS[i]), want)
    with pytest.raises(TypeError, match="group size"):
        x.T.contiguous().reduce("gpus", "sum", scatter=True)  # leading dim 3, group size 2


def test_reduce_in_place_and_argument_errors(procs) -> None:
    x, xs = _inputs(procs, torch.float64)
    same = x.reduce_("gpus", "sum")
    assert same is x
    for members in _groups(("gpus",)).values():
        for i in members:
            assert torch.allclose(fetch(x, **POINTS[i]), xs[members[0]] + xs[members[1]])
    with pytest.raises(KeyError):
        x.reduce("nodes")
    with pytest.raises(ValueError):
        x.reduce("gpus", "median")
    with pytest.raises(ValueError):
        x.reduce(("gpus", "gpus"))
    with pytest.raises(ValueError):
        x.reduce_("gpus", "stack")


def test_an_op_failing_on_one_rank_poisons_its_dependents_and_the_mesh_keeps_working(procs) -> None:
    def fail_on_one(t, r):
        if int(r) == 1:
            raise ValueError("boom on this rank")
        return t + 1

    bad = monarch.remote(fail_on_one, propagate=lambda t, r: t)
    with procs.activate():
        x = torch.ones(3)
        y = bad(x, procs.rank_tensor(("hosts", "gpus")))
        z = y * 2
        red = z.reduce("gpus", "sum")
    with pytest.raises(TensorOpError) as info:
        fetch(z, hosts=0, gpus=1)
    err = info.value
    assert err.rank == {"hosts": 0, "gpus": 1} and "ValueError: boom on this rank" in str(err)
    assert "fail_on_one" in err.remote_traceback
    assert torch.equal(fetch(z, hosts=0, gpus=0), torch.full((3,), 4.0))
    assert torch.equal(fetch(z, hosts=1, gpus=1), torch.full((3,), 4.0))
    # the collective over a poisoned input fails on every member of that group, not elsewhere
    with pytest.raises(TensorOpError, match="poisoned"):
        fetch(red, hosts=0, gpus=0)
    assert torch.equal(fetch(red, hosts=1, gpus=0), torch.full((3,), 8.0))
    # and the mesh (its groups included) keeps working
    with procs.activate():
        w = torch.ones(2).reduce("gpus", "sum")
        m = torch.ones(2, 2) @ torch.ones(2, 2)
    assert torch.equal(fetch(w, hosts=0, gpus=1), torch.full((2,), 2.0))
    assert torch.equal(fetch(m, hosts=0, gpus=1), torch.full((2, 2), 2.0))


def test_deleting_a_handle_frees_the_tensor_on_every_worker(procs) -> None:
    client = client_for(procs)
    with procs.activate():
        t = torch.zeros(1000)
    tid = t._id
    assert all(tid in ids for ids in client.stored())
    del t
    gc.collect()
    assert all(tid not in ids for ids in client.stored())


def test_local_ops_inside_activate_raise_and_no_mesh_runs_them_locally(procs) -> None:
    local = torch.ones(2)
    with procs.activate():
        with pytest.raises(ValueError, match="no_mesh"):
            local + 1
        with monarch.no_mesh.activate():
            assert torch.equal(local + 1, torch.full((2,), 2.0))
    assert torch.equal(local + 1, torch.full((2,), 2.0))


def test_meta_propagation_is_cached_per_op_and_input_metadata(procs) -> None:
    with procs.activate():
        a = torch.ones(7, 3)
        b = a + 1
        n = len(_cache)
        c = a + 1
        assert len(_cache) == n
        d = torch.ones(7, 4) + 1
        assert len(_cache) == n + 2  # ones(7, 4) and the add of a new shape
    assert b.shape == c.shape == (7, 3) and d.shape == (7, 4)
    assert a.dim() == 2 and a.size(1) == 3  # metadata questions are answered on the client


def test_import_monarch_does_not_import_torch_and_exports_the_tensor_names_lazily() -> None:
    code = (
        "import json, sys, monarch\n"
        "before = 'torch' in sys.modules\n"
        "names = [monarch.Tensor.__name__, monarch.fetch_shard.__name__, monarch.remote.__name__, repr(monarch.no_mesh)]\n"
        "print(json.dumps({'before': before, 'after': 'torch' in sys.modules, 'names': names}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got == {"before": False, "after": True, "names": ["Tensor", "fetch_shard", "remote", "monarch.no_mesh"]}
