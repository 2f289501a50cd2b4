"""Worker side of placements: ``redistribute``'s collectives, the local shard that remote
functions and actor endpoints receive for a placed handle, and ``to_dtensor``.

A ``PLACE`` command carries the plan made on the client (``_placement.plan_redistribute``); every
rank runs the same steps, each a collective over the gloo group of one mesh dimension (the groups
``Tensor.reduce`` uses). Uneven shards follow ``torch.chunk``'s rule: all_gather and
reduce_scatter pad every member's part to the chunk size and cut the padding off again (gloo needs
equal sizes). Before the first collective the ranks agree on whether the input is poisoned
anywhere (one flag all-reduce over the whole mesh), so a failure on one rank poisons the result on
every rank instead of leaving the others blocked in a collective.

``to_dtensor`` builds a ``torch.distributed.tensor.DeviceMesh`` over the same gloo groups: torch
2.13 has no public way to build a multi-dimensional DeviceMesh from existing groups without a
default process group (``DeviceMesh.from_group`` calls ``get_rank()`` of the default group,
which this engine never initializes), so each group's gloo backend is wrapped in a
``ProcessGroup`` registered under a unique name, and the mesh is made with its internal
``_init_backend=False, _rank=`` arguments (see the torch source, device_mesh.py).
"""

from __future__ import annotations

import importlib
import math
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch.distributed.distributed_c10d import GroupName
from torch.utils._pytree import tree_flatten, tree_unflatten

from . import _collectives
from ._placement import Partial, Placements, Replicate, Shard, chunk_range, local_region
from ._wire import Poison

if TYPE_CHECKING:
    from ._store import TensorStore

# (token, global shape, placements) of a placed handle, as sent to the workers
Layout = tuple[str, tuple[int, ...], Placements]


def run(
    store: TensorStore,
    out_id: int,
    in_id: int,
    shape: tuple[int, ...],
    src: Placements,
    steps: list[tuple[Any, ...]],
) -> None:
    """Run a ``PLACE`` command on this rank: store under ``out_id`` the part of the tensor
    ``in_id`` (global ``shape``, placed ``src``) that ``steps`` leave here (never raises: a
    failure poisons ``out_id``)."""
    v = store.get(in_id)
    if v is None:
        v = Poison(
            store._rank,
            "redistribute",
            f"KeyError: tensor {in_id} is not on this worker (deleted?)",
            "",
        )
    labels = store._labels
    used: list[tuple[str, ...]] = []  # the groups to drop if a collective fails
    op = f"redistribute({list(src)} -> {_dst(src, steps)})"
    try:
        if any(s[0] not in ("chunk", "partial") for s in steps):
            whole = tuple(labels)
            used.append(whole)
            pg, ri, g = store._groups.get(whole)
            bad = _collectives.flags_any(pg, ri, g, type(v) is Poison)
            if bad and type(v) is not Poison:
                store.put(
                    out_id,
                    Poison(
                        store._rank,
                        op,
                        f"RuntimeError: the input is poisoned on mesh ranks {bad}",
                        "",
                    ),
                )
                return
        if type(v) is Poison:
            store.put(out_id, v)
            return
        assert isinstance(v, torch.Tensor)
        x = v.detach()
        cur = list(src)
        for step in steps:
            k = step[1]
            if step[0] in ("gather", "alltoall", "allreduce", "reduce_scatter"):
                used.append((labels[k],))
            x = _step(store, x, step, shape, cur)
        store.put(out_id, x)
    except Exception as exc:
        for dims in used:
            store._groups.drop(dims)
        store.put(out_id, store.poison(op, exc))


def _dst(src: Placements, steps: list[tuple[Any, ...]]) -> list[Any]:
    cur: list[Any] = list(src)
    for s in steps:
        tag, k = s[0], s[1]
        if tag in ("gather", "allreduce"):
            cur[k] = Replicate()
        elif tag == "alltoall":
            cur[k] = Shard(s[3])
        elif tag in ("reduce_scatter", "chunk"):
            cur[k] = Shard(s[2])
        else:
            cur[k] = Partial(s[2])
    return cur


def _pad(x: torch.Tensor, d: int, n: int) -> torch.Tensor:
    """``x`` grown to ``n`` along ``d`` with zeros (contiguous)."""
    if x.size(d) == n:
        return x.contiguous()
    shape = list(x.shape)
    shape[d] = n
    out = x.new_zeros(shape)
    out.narrow(d, 0, x.size(d)).copy_(x)
    return out


def _step(
    store: TensorStore,
    x: torch.Tensor,
    step: tuple[Any, ...],
    shape: tuple[int, ...],
    cur: list[Any],
) -> torch.Tensor:
    tag, k = step[0], step[1]
    sizes, coords = store._sizes, store._coords
    g, me = sizes[k], coords[k]
    if tag == "chunk":
        d = step[2]
        start, n = chunk_range(x.size(d), g, me)
        cur[k] = Shard(d)
        return x.narrow(d, start, n).clone()
    if tag == "partial":
        cur[k] = Partial(step[2])
        return x if step[2] != "sum" or me == 0 else torch.zeros_like(x)
    pg, ri, gg = store._groups.get((store._labels[k],))
    assert gg == g and ri == me
    if tag == "gather":
        d = step[2]
        parent = list(cur)
        parent[k] = Replicate()
        n = local_region(shape, tuple(parent), sizes, coords)[d][1]
        lens = [chunk_range(n, g, i)[1] for i in range(g)]
        cur[k] = Replicate()
        if lens[0] == 0:
            return x
        xp = _pad(x, d, lens[0])
        outs = [torch.empty_like(xp) for _ in range(g)]
        pg.allgather([outs], [xp]).wait()
        return torch.cat([o.narrow(d, 0, n_i) for o, n_i in zip(outs, lens)], dim=d)
    if tag == "alltoall":  # even sizes only (the plan checks): out[j] = member j's chunk for me
        d, e = step[2], step[3]
        inp = torch.stack([p.contiguous() for p in x.chunk(g, dim=e)])
        out = torch.empty_like(inp)
        pg.alltoall_base(out, inp, [], [], dist.AllToAllOptions()).wait()
        cur[k] = Shard(e)
        return torch.cat(list(out.unbind(0)), dim=d)
    if tag == "allreduce":
        out = x.clone().contiguous()
        _allreduce(pg, out, step[2], g)
        cur[k] = Replicate()
        return out
    if tag == "reduce_scatter":
        d, red = step[2], step[3]
        n = x.size(d)
        lens = [chunk_range(n, g, i)[1] for i in range(g)]
        cs = lens[0]
        cur[k] = Shard(d)
        if cs == 0:
            return x
        xp = _pad(x, d, g * cs)
        parts = [xp.narrow(d, i * cs, cs).contiguous() for i in range(g)]
        out = torch.empty_like(parts[0])
        ropts = dist.ReduceScatterOptions()
        ropts.reduceOp = _collectives.REDUCE_OPS["sum" if red == "avg" else red]
        pg.reduce_scatter([out], [parts], ropts).wait()
        if red == "avg":
            out = out / g if out.is_floating_point() else torch.div(out, g, rounding_mode="floor")
        return out.narrow(d, 0, lens[me])
    raise ValueError(f"unknown redistribute step {step!r}")


def _allreduce(pg: Any, out: torch.Tensor, red: str, g: int) -> None:
    opts = dist.AllreduceOptions()
    opts.reduceOp = _collectives.REDUCE_OPS[red]
    pg.allreduce([out], opts).wait()


# -- the local shard a remote function or an endpoint receives ----------------------------------


class LocalShard(torch.Tensor):
    """This rank's part of a placed ``monarch.Tensor``, as a remote function or an actor
    endpoint receives it on the worker (a ``torch.Tensor`` sharing the stored tensor's memory;
    ops on it return plain tensors).

    Attributes:
        placements: the handle's placements, one per mesh dimension.
        global_shape: the shape of the whole (global) tensor.
    """

    # results of ops on it are plain tensors (torch's switch for subclass propagation)
    __torch_function__ = torch._C._disabled_torch_function_impl  # type: ignore[assignment]  # torch types it as a method
    _layout: Layout

    @property
    def placements(self) -> Placements:
        return self._layout[2]

    @property
    def global_shape(self) -> tuple[int, ...]:
        return self._layout[1]

    def to_dtensor(self) -> Any:
        """This shard as a ``torch.distributed.tensor.DTensor`` over a ``DeviceMesh`` of the
        ProcMesh (same dimension names, same gloo groups as ``Tensor.reduce``), whose
        ``full_tensor()`` is the global tensor. Runs on the worker; collectives on it block this
        thread, and every rank of the mesh must take part in them (SPMD).

        Returns:
            A DTensor of global shape ``global_shape`` with these placements (as
            ``torch.distributed.tensor`` placements); its local tensor shares memory with this
            shard.

        Raises:
            RuntimeError: called outside the worker of this shard's mesh.
        """
        from torch.distributed.tensor import DTensor

        token, shape, pls = self._layout
        store = _store_for(token)
        mesh = device_mesh(store, token, self.device.type)
        with torch._C.DisableTorchFunction():
            local = self.as_subclass(torch.Tensor)
        stride = tuple(math.prod(shape[i + 1 :]) for i in range(len(shape)))
        return DTensor.from_local(
            local,
            mesh,
            [_torch_placement(p) for p in pls],
            run_check=False,
            shape=torch.Size(shape),
            stride=stride,
        )

    def __reduce_ex__(self, protocol: Any) -> Any:
        # sent anywhere (an endpoint's reply), it is a plain tensor
        plain = self.as_subclass(torch.Tensor)
        return torch.Tensor.__reduce_ex__(plain, protocol)  # type: ignore[no-untyped-call]  # torch leaves it unannotated


LocalShard.__module__ = "monarch.tensor"


def _store_for(token: str) -> TensorStore:
    from ._store import LOCAL

    store = LOCAL.get(token)
    if store is None:
        raise RuntimeError(
            "to_dtensor() runs on a worker of the shard's mesh (in a remote function or an endpoint)"
        )
    return store


def _torch_placement(p: Any) -> Any:
    from torch.distributed import tensor as dt

    if isinstance(p, Shard):
        return dt.Shard(p.dim)
    if isinstance(p, Partial):
        return dt.Partial(p.reduce_op)
    return dt.Replicate()


def wrap(t: Any, layout: Layout) -> Any:
    """``t`` (a stored tensor) as a ``LocalShard`` of ``layout``; anything else unchanged."""
    if not isinstance(t, torch.Tensor):
        return t
    out = torch.Tensor._make_subclass(LocalShard, t.detach())
    out._layout = layout
    return out


_pgs: dict[int, tuple[Any, Any]] = {}  # id(gloo backend) -> (backend, ProcessGroup): kept alive
_pgs_lock = threading.Lock()


def _process_group(backend: Any, rank: int, size: int, token: str) -> Any:
    with _pgs_lock:
        hit = _pgs.get(id(backend))
        if hit is not None and hit[0] is backend:
            return hit[1]
        pg = dist.ProcessGroup(dist.HashStore(), rank, size)  # type: ignore[attr-defined]  # exported at run time
        gloo = dist.ProcessGroup.BackendType.GLOO
        pg._set_default_backend(gloo)
        pg._register_backend(torch.device("cpu"), gloo, backend)
        name = GroupName(f"monarch.tensor/{token}/{len(_pgs)}")
        pg._set_group_name(name)
        torch._C._distributed_c10d._register_process_group(name, pg)
        _pgs[id(backend)] = (backend, pg)
        return pg


def device_mesh(store: TensorStore, token: str, device_type: str = "cpu") -> Any:
    """A ``DeviceMesh`` over ``store``'s mesh whose dimension ``k`` uses the gloo group of mesh
    dimension ``k`` (built on first use, as ``Tensor.reduce`` builds it)."""
    from torch.distributed.device_mesh import DeviceMesh

    labels, sizes = store._labels, store._sizes
    pgs = []
    for label in labels:
        backend, ri, g = store._groups.get((label,))
        pgs.append(_process_group(backend, ri, g, token))
    ranks = torch.arange(math.prod(sizes), dtype=torch.int).reshape(sizes)
    mesh = DeviceMesh(
        device_type, ranks, mesh_dim_names=tuple(labels), _init_backend=False, _rank=store.flat_rank
    )
    mesh._dim_group_names = [pg.group_name for pg in pgs]
    for pg in pgs:
        mesh._pg_registry[pg.group_name] = pg
    return mesh


class PlacedFn:
    """A remote function called with placed handles: on the worker it hands them to ``fn`` as
    ``LocalShard``s (``layouts``: the flat argument positions of the placed handles)."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[..., Any] | str) -> None:
        self.fn = fn

    def __call__(self, layouts: tuple[tuple[int, Layout], ...], *args: Any, **kwargs: Any) -> Any:
        fn = self.fn
        if isinstance(fn, str):
            mod, _, attr = fn.rpartition(".")
            fn = getattr(importlib.import_module(mod), attr)
        leaves, spec = tree_flatten((args, kwargs))
        for i, layout in layouts:
            leaves[i] = wrap(leaves[i], layout)
        a, k = tree_unflatten(leaves, spec)
        assert callable(fn)
        return fn(*a, **k)

    def __eq__(self, other: object) -> bool:
        return type(other) is PlacedFn and other.fn == self.fn

    def __hash__(self) -> int:
        return hash((PlacedFn, self.fn))

    def __repr__(self) -> str:  # names the user's function in a failed op's error
        return getattr(self.fn, "__qualname__", None) or str(self.fn)

    def __reduce__(self) -> tuple[Any, ...]:
        return (PlacedFn, (self.fn,))


class PlacedPropagate:
    """The propagator of a ``PlacedFn``: the user's, without the layouts argument."""

    __slots__ = ("propagate",)

    def __init__(self, propagate: Callable[..., Any]) -> None:
        self.propagate = propagate

    def __call__(self, layouts: Any, *args: Any, **kwargs: Any) -> Any:
        return self.propagate(*args, **kwargs)

    def __eq__(self, other: object) -> bool:
        return type(other) is PlacedPropagate and other.propagate == self.propagate

    def __hash__(self) -> int:
        return hash((PlacedPropagate, self.propagate))


def placed_local(token: str, id: int, layout: Layout) -> Any:
    """(actor side) How a placed handle argument unpickles: this rank's ``LocalShard``."""
    from ._rref import _local

    return wrap(_local(token, id), layout)
