"""Placements of distributed tensors on a {"hosts": 2, "gpus": 2} mesh of real procs:
``monarch.distribute``, ``monarch.fetch``, ``t.redistribute`` (every transition, uneven shards
included), op propagation (pointwise, the sharded matmul), ``from_local``/``to_local`` and
``to_dtensor`` on the workers. Every result is checked against a local recomputation."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

import monarch  # noqa: E402
from monarch import Partial, Replicate, Shard  # noqa: E402
from monarch.actor import Actor, endpoint  # noqa: E402
from monarch.tensor import ShardingError, TensorOpError  # noqa: E402
from monarch.tensor._placement import chunk_range, local_region, normalize, plan_redistribute  # noqa: E402
from monarch.testing import proc_mesh  # noqa: E402

WAIT_S = 60.0
SIZES = [2, 2]
POINTS = [(h, g) for h in range(2) for g in range(2)]


@pytest.fixture(scope="module")
def procs():
    with proc_mesh({"hosts": 2, "gpus": 2}, timeout_s=30.0) as p:
        yield p


def full(t):
    return monarch.fetch(t).get(WAIT_S)


def shard_at(t, pt):
    return monarch.fetch_shard(t, hosts=pt[0], gpus=pt[1]).get(WAIT_S)


def expected_part(x, placements, pt):
    """Rank ``pt``'s part of ``x`` by torch.chunk, applied per mesh dimension in order."""
    part = x
    for p, size, c in zip(placements, SIZES, pt):
        if isinstance(p, Shard):
            chunks = torch.chunk(part, size, dim=p.dim)
            part = chunks[c] if c < len(chunks) else part.narrow(p.dim, 0, 0)
    return part


def check_parts(t, x):
    """Every rank holds exactly its torch.chunk part of ``x`` (replicated / non-partial dims)."""
    for pt in POINTS:
        assert torch.equal(shard_at(t, pt), expected_part(x, t.placements, pt)), (t.placements, pt)


# -- geometry, no procs ---------------------------------------------------------------------------


@pytest.mark.parametrize("n", [0, 1, 3, 5, 7, 8])
@pytest.mark.parametrize("g", [1, 2, 3, 4])
def test_chunk_range_follows_torch_chunk(n, g) -> None:
    chunks = torch.chunk(torch.arange(n), g) if n else ()
    for i in range(g):
        start, length = chunk_range(n, g, i)
        want = chunks[i].tolist() if i < len(chunks) else []
        assert list(range(start, start + length)) == want


def test_placements_normalize_validate_and_accept_dtensor_placements() -> None:
    from torch.distributed.tensor import Partial as TP
    from torch.distributed.tensor import Shard as TS

    labels = ["hosts", "gpus"]
    assert normalize([Shard(-1), Replicate()], labels, 2) == (Shard(1), Replicate())
    assert normalize({"gpus": Shard(0)}, labels, 2) == (Replicate(), Shard(0))
    assert normalize([TS(1), TP()], labels, 2) == (Shard(1), Partial())
    with pytest.raises(ShardingError, match="2 dimensions"):
        normalize([Shard(0)], labels, 2)
    with pytest.raises(ShardingError, match="out of range"):
        normalize([Shard(2), Replicate()], labels, 2)
    with pytest.raises(ShardingError, match="nodes"):
        normalize({"nodes": Shard(0)}, labels, 2)
    with pytest.raises(TypeError):
        normalize(["shard", Replicate()], labels, 2)
    with pytest.raises(ValueError):
        Partial("median")
    assert repr(Partial("max")) == "Partial('max')" and Shard(0).__module__ == "monarch"
    # nested sharding of one tensor dimension splits it left to right (DTensor's order)
    assert local_region((5, 3), (Shard(0), Shard(0)), SIZES, (0, 1)) == [(2, 1), (0, 3)]
    assert plan_redistribute((4, 6), (Shard(0), Replicate()), (Replicate(), Shard(1)), SIZES) == [
        ("gather", 0, 0),
        ("chunk", 1, 1),
    ]


# -- distribute and fetch -------------------------------------------------------------------------

LAYOUTS = [
    [Replicate(), Replicate()],
    [Shard(0), Replicate()],
    [Replicate(), Shard(1)],
    [Shard(0), Shard(1)],
    [Shard(1), Shard(0)],
    [Shard(0), Shard(0)],
    [Partial(), Replicate()],
    [Shard(0), Partial()],
    [Partial("max"), Partial("avg")],
]


@pytest.mark.parametrize("shape", [(4, 6), (5, 3), (3, 2)], ids=["even", "uneven", "empty-shards"])
@pytest.mark.parametrize("placements", LAYOUTS, ids=repr)
def test_distribute_gives_each_rank_its_chunk_and_fetch_assembles_the_tensor(
    procs, placements, shape
) -> None:
    x = torch.arange(float(shape[0] * shape[1])).reshape(shape) - 3
    t = monarch.distribute(x, procs, placements)
    assert t.shape == shape and t.dtype == x.dtype and t.placements == tuple(placements)
    assert torch.equal(full(t), x)
    if not any(isinstance(p, Partial) for p in placements):
        check_parts(t, x)


def test_distribute_inside_activate_and_fetch_of_a_pytree(procs) -> None:
    x = torch.arange(12, dtype=torch.int64).reshape(3, 4)
    with procs.activate():
        t = monarch.distribute(x, procs, {"gpus": Shard(1)})
        u = t + 1  # ops in the same batch run after the parts have arrived
    got = monarch.fetch({"t": t, "u": [u, "k"]}).get(WAIT_S)
    assert torch.equal(got["t"], x) and torch.equal(got["u"][0], x + 1) and got["u"][1] == "k"


def test_per_rank_handles_have_no_placements_and_are_not_fetched_whole(procs) -> None:
    with procs.activate():
        r = torch.ones(2) * procs.rank_tensor("gpus")
    assert r.placements is None
    with pytest.raises(ShardingError, match="fetch_shard"):
        monarch.fetch(r)
    with pytest.raises(ShardingError, match="no placements"):
        r.redistribute([Replicate(), Replicate()])
    with pytest.raises(TypeError):
        monarch.distribute(r, procs, [Replicate(), Replicate()])
    with pytest.raises(TypeError, match="LocalShard"):
        monarch.distribute(torch.ones(2), procs, [Replicate(), Replicate()]).to_dtensor()
    t = monarch.distribute(torch.ones(2), procs, [Replicate(), Replicate()])
    with pytest.raises(ShardingError, match="redistribute"):
        t.reduce("gpus")


# -- ops --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("m,k,n", [(4, 6, 2), (5, 3, 7)], ids=["even", "uneven"])
def test_sharded_matmul_gives_the_local_product_and_its_placements(procs, m, k, n) -> None:
    a = torch.randn(m, k, dtype=torch.float64)
    b = torch.randn(k, n, dtype=torch.float64)
    da = monarch.distribute(a, procs, [Shard(0), Replicate()])
    db = monarch.distribute(b, procs, [Replicate(), Shard(1)])
    c = da @ db
    assert c.shape == (m, n) and c.placements == (Shard(0), Shard(1))
    assert torch.allclose(full(c), a @ b)
    check_parts(c, a @ b)
    # the contraction dimension sharded on both sides: a Partial sum, reduced by redistribute
    pa = monarch.distribute(a, procs, [Replicate(), Shard(1)])
    pb = monarch.distribute(b, procs, [Replicate(), Shard(0)])
    p = torch.matmul(pa, pb)
    assert p.placements == (Replicate(), Partial())
    assert torch.allclose(full(p), a @ b)
    r = p.redistribute([Replicate(), Replicate()])
    assert r.placements == (Replicate(), Replicate()) and torch.allclose(shard_at(r, (1, 1)), a @ b)
    with pytest.raises(ShardingError, match="matmul"):
        da @ da.T.redistribute([Shard(0), Replicate()])  # S(0) x S(0): no rule


def test_pointwise_ops_keep_matching_placements_and_refuse_the_rest(procs) -> None:
    x = torch.arange(15.0).reshape(5, 3) - 7
    y = torch.linspace(-1, 1, 15).reshape(5, 3)
    pls = [Shard(0), Shard(1)]
    dx, dy = monarch.distribute(x, procs, pls), monarch.distribute(y, procs, pls)
    e = ((dx * 2 - dy).relu() + torch.exp(dy)) / 3
    assert e.placements == tuple(pls)
    assert torch.allclose(full(e), ((x * 2 - y).relu() + torch.exp(y)) / 3)
    dx.add_(dy)  # in place: placements unchanged
    assert dx.placements == tuple(pls) and torch.allclose(full(dx), x + y)
    tt = dx.T
    assert tt.placements == (Shard(1), Shard(0)) and torch.allclose(full(tt), (x + y).T)
    # Partial: linear ops only
    px = monarch.distribute(x, procs, [Partial(), Replicate()])
    py = monarch.distribute(y, procs, [Partial(), Replicate()])
    lin = (px + py) * 2 - py
    assert lin.placements == (Partial(), Replicate()) and torch.allclose(full(lin), (x + y) * 2 - y)
    with pytest.raises(ShardingError, match="Partial"):
        px + 1
    with pytest.raises(ShardingError, match="Partial"):
        px.relu()
    with pytest.raises(ShardingError, match="Partial"):
        2 / px  # not linear in px
    with pytest.raises(ShardingError, match="Partial"):
        px * py
    with pytest.raises(ShardingError, match="lie differently"):
        dy + monarch.distribute(y, procs, [Shard(0), Replicate()])
    for no_rule in (lambda: dy.cumsum(0), lambda: dy[0], lambda: dy.reshape(-1)):
        with pytest.raises(ShardingError, match="no placement rule"):
            no_rule()
    assert dy.size(0) == 5 and dy.dim() == 2  # metadata is answered on the client
    with procs.activate():
        per_rank = torch.ones(5, 3)
        with pytest.raises(ShardingError, match="from_local"):
            dy + per_rank


def test_sum_and_mean_leave_a_partial_where_a_sharded_dim_is_reduced(procs) -> None:
    x = torch.randn(5, 6, dtype=torch.float64)
    y = torch.randn(5, 6, dtype=torch.float64)
    t = monarch.distribute(x, procs, [Shard(0), Shard(1)])
    u = monarch.distribute(y, procs, [Shard(0), Shard(1)])
    cases = [
        (t.sum(), (Partial(), Partial()), x.sum()),
        (t.sum(0), (Partial(), Shard(0)), x.sum(0)),
        (torch.sum(t, dim=1, keepdim=True), (Shard(0), Partial()), x.sum(1, keepdim=True)),
        (((t - u) ** 2).sum(), (Partial(), Partial()), ((x - y) ** 2).sum()),
    ]
    for got, pls, want in cases:
        assert got.placements == pls and got.shape == want.shape
        assert torch.allclose(full(got), want)
    loss = ((t - u) ** 2).sum().redistribute([Replicate(), Replicate()])
    for pt in POINTS:
        assert torch.allclose(shard_at(loss, pt), ((x - y) ** 2).sum())
    even = torch.randn(4, 6, dtype=torch.float64)
    e = monarch.distribute(even, procs, [Shard(0), Shard(1)])
    assert e.mean().placements == (Partial("avg"), Partial("avg"))
    assert torch.allclose(full(e.mean()), even.mean()) and torch.allclose(
        full(e.mean(1)), even.mean(1)
    )
    with pytest.raises(ShardingError, match="uneven"):
        t.mean()
    with pytest.raises(ShardingError, match="Partial"):
        monarch.distribute(x, procs, [Partial("max"), Replicate()]).sum()


# -- redistribute -----------------------------------------------------------------------------------

TRANSITIONS = [
    ([Shard(0), Replicate()], [Replicate(), Replicate()]),  # all_gather
    ([Shard(0), Shard(1)], [Replicate(), Replicate()]),
    ([Replicate(), Replicate()], [Shard(0), Shard(1)]),  # local chunks
    ([Shard(0), Replicate()], [Shard(1), Replicate()]),  # all_to_all (even) or gather + chunk
    ([Shard(1), Shard(0)], [Shard(0), Shard(1)]),
    ([Shard(0), Shard(0)], [Replicate(), Shard(0)]),  # nested shards
    ([Shard(0), Replicate()], [Shard(0), Shard(0)]),
    ([Partial(), Replicate()], [Replicate(), Replicate()]),  # all_reduce
    ([Partial(), Replicate()], [Shard(0), Replicate()]),  # reduce_scatter
    ([Partial(), Partial()], [Shard(1), Shard(0)]),
    ([Partial("avg"), Replicate()], [Shard(1), Replicate()]),
    ([Partial("max"), Shard(0)], [Replicate(), Replicate()]),
    ([Replicate(), Shard(1)], [Partial(), Shard(1)]),  # local: zeros off coordinate 0
]


@pytest.mark.parametrize("shape", [(4, 6), (5, 3), (3, 2)], ids=["even", "uneven", "empty-shards"])
@pytest.mark.parametrize("src,dst", TRANSITIONS, ids=lambda v: repr(v))
def test_redistribute_moves_the_parts_and_keeps_the_global_tensor(procs, src, dst, shape) -> None:
    x = torch.randn(*shape, dtype=torch.float64)
    t = monarch.distribute(x, procs, src)
    out = t.redistribute(dst)
    assert out.placements == tuple(dst) and out.shape == shape
    assert torch.allclose(full(out), x)
    if not any(isinstance(p, Partial) for p in dst):
        for pt in POINTS:
            assert torch.allclose(shard_at(out, pt), expected_part(x, tuple(dst), pt)), pt
    assert torch.allclose(full(t), x)  # the source is untouched


def test_redistribute_reduces_partials_that_differ_on_every_rank(procs) -> None:
    with procs.activate():
        r = procs.rank_tensor(("hosts", "gpus"))
        local = torch.arange(12.0).reshape(4, 3) * (r + 1).double()
    parts = [shard_at(local, pt) for pt in POINTS]
    for op, want in [
        ("sum", sum(parts)),
        ("max", torch.stack(parts).amax(0)),
        ("avg", torch.stack(parts).mean(0)),
    ]:
        p = monarch.from_local(local, [Partial(op), Partial(op)])
        assert torch.allclose(full(p), want)
        for dst in ([Replicate(), Replicate()], [Shard(0), Shard(1)]):
            out = p.redistribute(dst)
            assert torch.allclose(full(out), want), (op, dst)
            for pt in POINTS:
                assert torch.allclose(shard_at(out, pt), expected_part(want, tuple(dst), pt)), (
                    op,
                    dst,
                    pt,
                )
    with pytest.raises(ShardingError, match="Partial"):
        monarch.from_local(local, [Partial("max"), Replicate()]).redistribute(
            [Partial("sum"), Replicate()]
        )


def test_from_local_and_to_local_name_the_same_rank_tensors(procs) -> None:
    with procs.activate():
        r = procs.rank_tensor(("hosts", "gpus"))
        local = torch.ones(2, 3) * r.double()
    g = monarch.from_local(local, [Shard(0), Shard(1)])
    assert g.shape == (4, 6)
    want = torch.cat(
        [torch.cat([torch.full((2, 3), float(h * 2 + c)) for c in range(2)], 1) for h in range(2)],
        0,
    )
    assert torch.equal(full(g), want)
    back = g.to_local()
    assert back.placements is None and back.shape == (2, 3)
    for i, pt in enumerate(POINTS):
        assert torch.equal(shard_at(back, pt), torch.full((2, 3), float(i)))
    uneven = monarch.distribute(torch.zeros(5, 3), procs, [Shard(0), Replicate()])
    with pytest.raises(ShardingError, match="differ in shape"):
        uneven.to_local()
    with pytest.raises(ShardingError, match="not the local"):
        monarch.from_local(local, [Shard(0), Replicate()], shape=(5, 3))


def test_a_poisoned_input_poisons_the_redistribute_everywhere_and_the_mesh_keeps_working(
    procs,
) -> None:
    def fail_on_one(t, r):
        if int(r) == 3:
            raise ValueError("boom on rank 3")
        return t + 0

    bad = monarch.remote(fail_on_one, propagate=lambda t, r: t)
    with procs.activate():
        y = bad(torch.ones(2, 2), procs.rank_tensor(("hosts", "gpus")))
    p = monarch.from_local(y, [Shard(0), Shard(1)])
    out = p.redistribute([Replicate(), Replicate()])
    with pytest.raises(TensorOpError, match=r"boom on rank 3|poisoned on mesh ranks \[3\]"):
        full(out)  # whichever rank's part arrives first
    with pytest.raises(TensorOpError, match="boom on rank 3"):
        shard_at(out, (1, 1))
    with pytest.raises(TensorOpError, match=r"poisoned on mesh ranks \[3\]"):
        shard_at(out, (0, 0))
    x = torch.randn(4, 4)
    again = monarch.distribute(x, procs, [Shard(0), Shard(1)]).redistribute(
        [Replicate(), Replicate()]
    )
    assert torch.allclose(shard_at(again, (1, 0)), x)


# -- to_dtensor on the workers ----------------------------------------------------------------------


class DTensorUser(Actor):
    """Code that uses torch.distributed.tensor on the local shard it is given."""

    @endpoint
    def full_and_placements(self, t: torch.Tensor) -> tuple[torch.Tensor, list[str]]:
        dt = t.to_dtensor()
        return dt.full_tensor(), [repr(p) for p in dt.placements]

    @endpoint(propagate=lambda t: t.sum())
    def global_sum(self, t: torch.Tensor) -> torch.Tensor:
        return t.to_dtensor().sum().full_tensor()  # DTensor: a Partial, all-reduced


def test_to_dtensor_in_a_remote_function_uses_a_device_mesh_over_the_same_groups(procs) -> None:
    a = torch.randn(5, 3, dtype=torch.float64)
    b = torch.randn(3, 4, dtype=torch.float64)

    def dtensor_matmul(x, y):
        from torch.distributed.tensor import DTensor, Replicate

        dx, dy = x.to_dtensor(), y.to_dtensor()
        assert isinstance(dx, DTensor) and dx.device_mesh.mesh_dim_names == ("hosts", "gpus")
        assert tuple(dx.shape) == x.global_shape
        return (dx @ dy).redistribute(dx.device_mesh, [Replicate(), Replicate()]).to_local()

    fn = monarch.remote(dtensor_matmul, propagate=lambda x, y: x @ y)
    da = monarch.distribute(a, procs, [Shard(0), Replicate()])
    db = monarch.distribute(b, procs, [Replicate(), Shard(1)])
    with procs.activate():
        c = fn(da, db)
    assert c.placements is None and c.shape == (5, 4)
    for pt in POINTS:
        assert torch.allclose(shard_at(c, pt), a @ b)


def test_to_dtensor_in_an_actor_endpoint_gives_the_full_tensor(procs) -> None:
    x = torch.arange(20.0).reshape(5, 4)
    t = monarch.distribute(x, procs, [Shard(0), Shard(1)])
    user = procs.spawn("dtensor_user", DTensorUser)
    got = user.full_and_placements.call(t).get(WAIT_S)
    assert len(list(got.items())) == 4
    for _, (ft, pls) in got.items():
        assert torch.equal(ft, x) and pls == ["Shard(dim=0)", "Shard(dim=1)"]
    s = user.global_sum.rref(t)  # a per-rank handle, in op order
    assert s.placements is None and s.shape == ()
    for pt in POINTS:
        assert torch.allclose(shard_at(s, pt), x.sum())


def test_placement_names_load_without_torch() -> None:
    import json
    import subprocess
    import sys

    code = (
        "import json, pickle, sys, monarch\n"
        "s = monarch.Shard(1)\n"
        "same = pickle.loads(pickle.dumps([s, monarch.Replicate(), monarch.Partial('max')]))\n"
        "print(json.dumps({'torch': 'torch' in sys.modules, 'same': repr(same)}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got == {"torch": False, "same": "[Shard(1), Replicate(), Partial('max')]"}


# -- every transition, in threads: the real plan and steps over in-memory groups ------------------


class _Rendezvous:
    """One simulated group: each member posts a value and gets every member's."""

    def __init__(self, g: int) -> None:
        import threading

        self.barrier = threading.Barrier(g)
        self.slots: list = [None] * g

    def exchange(self, ri: int, value):
        self.slots[ri] = value
        self.barrier.wait(10)
        out = list(self.slots)
        self.barrier.wait(10)
        return out


def _combine(vals, op):
    import torch.distributed as dist

    s = torch.stack(vals)
    if op == dist.ReduceOp.SUM:
        return s.sum(0)
    if op == dist.ReduceOp.AVG:
        return s.mean(0)
    if op == dist.ReduceOp.MAX:
        return s.amax(0)
    if op == dist.ReduceOp.MIN:
        return s.amin(0)
    raise AssertionError(op)


class _Done:
    def wait(self):
        return True


class _FakePG:
    """The four gloo calls ``_redistribute`` makes, over a ``_Rendezvous``."""

    def __init__(self, rv: _Rendezvous, ri: int) -> None:
        self.rv, self.ri = rv, ri

    def allgather(self, outs, ins):
        for o, v in zip(outs[0], self.rv.exchange(self.ri, ins[0].clone())):
            o.copy_(v)
        return _Done()

    def alltoall_base(self, out, inp, _a, _b, _opts):
        for j, v in enumerate(self.rv.exchange(self.ri, inp.clone())):
            out[j].copy_(v[self.ri])
        return _Done()

    def reduce_scatter(self, outs, parts, opts):
        vals = self.rv.exchange(self.ri, [p.clone() for p in parts[0]])
        outs[0].copy_(_combine([v[self.ri] for v in vals], opts.reduceOp))
        return _Done()

    def allreduce(self, outs, opts):
        outs[0].copy_(_combine(self.rv.exchange(self.ri, outs[0].clone()), opts.reduceOp))
        return _Done()


class _FakeGroups:
    def __init__(self, labels, sizes, coords, world, lock) -> None:
        self.args = (labels, sizes, coords)
        self.world, self.lock = world, lock

    def get(self, dims):
        from monarch.tensor._collectives import group_layout

        gi, ri, g = group_layout(*self.args, dims)
        with self.lock:
            rv = self.world.setdefault((dims, gi), _Rendezvous(g))
        return _FakePG(rv, ri), ri, g

    def drop(self, dims):
        raise AssertionError(f"a collective failed over {dims}")


class _FakeStore:
    def __init__(self, labels, sizes, coords, world, lock) -> None:
        self._labels, self._sizes, self._coords = labels, sizes, list(coords)
        self._rank = dict(zip(labels, coords))
        self._groups = _FakeGroups(labels, sizes, coords, world, lock)
        self.values: dict = {}

    def get(self, i):
        return self.values.get(i)

    def put(self, i, v):
        self.values[i] = v

    def poison(self, op, exc):
        raise exc


def _source_part(x, pls, sizes, coords):
    """Rank ``coords``'s part: its chunk, and for partial dims values whose reduction is ``x``
    (weights summing to 1 for sum and avg-compatible offsets for avg/max/min)."""
    part = x
    for d, (start, n) in enumerate(local_region(tuple(x.shape), pls, sizes, coords)):
        part = part.narrow(d, start, n)
    part = part.clone()
    for p, g, c in zip(pls, sizes, coords):
        if isinstance(p, Partial):
            if p.reduce_op == "sum":
                part = part * (c + 1) / (g * (g + 1) / 2)
            elif p.reduce_op == "avg":
                part = part + (c - (g - 1) / 2)
            elif p.reduce_op == "max":
                part = part - c
            else:
                part = part + c
    return part


def _simulate(x, src, dst, sizes):
    import threading

    from monarch.tensor import _redistribute
    from monarch.tensor._distribute import _assemble
    from monarch.tensor._placement import points

    labels = [f"d{k}" for k in range(len(sizes))]
    shape = tuple(x.shape)
    steps = plan_redistribute(shape, src, dst, sizes)
    world: dict = {}
    lock = threading.Lock()
    stores = {c: _FakeStore(labels, sizes, c, world, lock) for c in points(sizes)}
    errors: list = []

    def rank(c):
        st = stores[c]
        st.put(1, _source_part(x, src, sizes, c))
        try:
            _redistribute.run(st, 2, 1, shape, src, steps)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=rank, args=(c,)) for c in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    parts = {c: st.get(2) for c, st in stores.items()}
    for c, v in parts.items():  # each rank's part has its chunk's shape
        assert [n for _, n in local_region(shape, dst, sizes, c)] == list(v.shape), (c, steps)
    needed = {
        c: v
        for c, v in parts.items()
        if all(ci == 0 or not isinstance(p, Replicate) for p, ci in zip(dst, c))
    }
    assert torch.allclose(_assemble(needed, dst, sizes, shape), x), (src, dst, steps)
    if not any(isinstance(p, Partial) for p in dst):
        for c, v in parts.items():
            want = x
            for d, (start, n) in enumerate(local_region(shape, dst, sizes, c)):
                want = want.narrow(d, start, n)
            assert torch.allclose(v, want), (src, dst, c, steps)
    return steps


ALL = [Replicate(), Shard(0), Shard(1), Partial()]


@pytest.mark.parametrize(
    "sizes,shape", [([2, 2], (4, 6)), ([2, 3], (5, 7)), ([3], (7, 2)), ([2, 1, 3], (3, 8))], ids=str
)
def test_every_transition_runs_the_real_steps_to_the_right_parts(sizes, shape) -> None:
    import itertools

    x = torch.randn(*shape, dtype=torch.float64)
    combos = list(itertools.product(ALL, repeat=len(sizes)))
    if len(combos) > 16:  # 3 mesh dims: every src to every dst would be 4096 runs; take a slice
        combos = combos[::5]
    kinds = set()
    for src in combos:
        for dst in combos:
            kinds.update(s[0] for s in _simulate(x, tuple(src), tuple(dst), sizes))
    assert {"gather", "chunk", "allreduce", "reduce_scatter", "partial"} <= kinds
    assert ("alltoall" in kinds) == (shape == (4, 6))


@pytest.mark.parametrize("op", ["avg", "max", "min"])
def test_partials_of_every_op_reduce_to_the_tensor(op) -> None:
    x = torch.randn(5, 7, dtype=torch.float64)
    for dst in [(Replicate(), Replicate()), (Shard(0), Shard(1)), (Shard(1), Partial(op))]:
        _simulate(x, (Partial(op), Partial(op)), dst, [2, 3])
