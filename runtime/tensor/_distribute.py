"""Client side of placements: ``monarch.distribute``, ``monarch.fetch``, ``Tensor.redistribute``,
``monarch.from_local`` and ``Tensor.to_local`` (semantics of ``torch.distributed.tensor``'s
``distribute_tensor``, ``full_tensor``, ``redistribute``, ``from_local`` and ``to_local``).

``distribute`` sends each rank only its part (one message per rank, after the pending batch:
per-sender FIFO keeps later ops behind it). ``fetch`` brings one part per distinct shard (rank 0
along replicated mesh dimensions, every rank along sharded and partial ones) and assembles them
innermost mesh dimension first: shards are concatenated in rank order, partials reduced.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, TypeVar

import torch
from torch.utils._pytree import tree_flatten, tree_unflatten

from .._core.errors import ActorError, ShardingError
from .._core.future import Future
from ._client import MeshClient, client_for
from ._errors import TensorOpError
from ._placement import (
    Partial,
    Placements,
    Replicate,
    Shard,
    is_even,
    local_region,
    normalize,
    plan_redistribute,
    points,
)
from ._tensor import Tensor, _bare, new_handle
from ._wire import CALL, PLACE

if TYPE_CHECKING:
    from ..actor import ProcMesh

T = TypeVar("T")


def _put(t: torch.Tensor) -> torch.Tensor:
    """(worker) The part a rank was sent, stored as it arrived."""
    return t


def _alias(t: torch.Tensor) -> torch.Tensor:
    """(worker) The same stored tensor under a second id."""
    return t


def _placed(meta: torch.Tensor, client: MeshClient, placements: Placements) -> Tensor:
    h = new_handle(meta, client, client.new_id())
    h._placements = placements
    return h


def _meta(shape: Any, dtype: torch.dtype) -> torch.Tensor:
    with _bare():
        return torch.empty(tuple(shape), dtype=dtype, device="meta")


def distribute(tensor: torch.Tensor, procs: ProcMesh, placements: Any) -> Tensor:
    """Place a local (client) tensor on ``procs`` (DTensor's ``distribute_tensor``).

    Args:
        tensor: a CPU tensor on the client, any shape and dtype.
        procs: the ProcMesh that will hold it.
        placements: one placement per mesh dimension, in the mesh's order (``[Shard(0),
            Replicate()]``), or ``{label: placement}`` (labels left out replicate). ``Shard(d)``
            gives each rank its ``torch.chunk`` part of dimension ``d``; ``Partial("sum")`` puts
            the values on coordinate 0 and zeros elsewhere along that mesh dimension;
            ``Partial("avg"/"max"/"min")`` puts them everywhere.

    Returns:
        A placed handle: its ``shape`` is ``tensor``'s (global) shape, ``placements`` as given.

    Raises:
        TypeError: ``tensor`` is a ``monarch.Tensor`` (use ``redistribute``) or not a tensor.
        ShardingError: placements that do not fit the mesh or the tensor.
    """
    if type(tensor) is Tensor:
        raise TypeError(
            "distribute() takes a local tensor; a monarch.Tensor is already on a mesh (redistribute it)"
        )
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"distribute() takes a torch.Tensor, not {type(tensor).__name__}")
    client = client_for(procs)
    with _bare():
        pls = normalize(placements, client.labels, tensor.dim())
        full = tensor.detach().cpu()
        shape = tuple(full.shape)
        h = _placed(_meta(shape, full.dtype), client, pls)
        client.ensure_store()
        fid = client.fn_id(_put)
        client.flush()
        for coords in points(client.sizes):
            part = full
            for d, (start, n) in enumerate(local_region(shape, pls, client.sizes, coords)):
                if n != shape[d]:
                    part = part.narrow(d, start, n)
            for p, c in zip(pls, coords):
                if isinstance(p, Partial) and p.reduce_op == "sum" and c != 0:
                    part = torch.zeros_like(part)
            part = part.clone(memory_format=torch.contiguous_format)  # only this part is sent
            target = client.workers.slice(**dict(zip(client.labels, coords)))
            target.run.broadcast([], [(CALL, fid, (h._id,), (part,), {})])
    return h


def fetch(obj: T) -> Future[T]:
    """Assemble every placed handle in ``obj`` into its global tensor on the client (DTensor's
    ``full_tensor``, done by the client: the ranks send their parts, nothing is gathered on
    the mesh).

    Args:
        obj: a pytree (tuples, lists, dicts) whose ``monarch.Tensor`` leaves have placements;
            other leaves are returned as they are.

    Returns:
        A Future of ``obj`` with each handle replaced by its global tensor (CPU, the handle's
        shape and dtype). It fails with ``TensorOpError`` when a part failed on a rank.

    Raises:
        ShardingError: a handle without placements (one tensor per rank: use
            ``monarch.fetch_shard`` for a rank's tensor, or ``monarch.from_local`` to give it
            placements).
    """
    leaves, spec = tree_flatten(obj)
    pos = [i for i, x in enumerate(leaves) if type(x) is Tensor]
    for i in pos:
        if leaves[i]._placements is None:
            raise ShardingError(
                f"fetch: {leaves[i]!r} has no placements (one tensor per rank); use monarch.fetch_shard(t, **coords) "
                "for one rank's tensor, or monarch.from_local(t, placements)"
            )
    out: Future[T] = Future()
    if not pos:
        out.set_result(obj)
        return out
    # one fetch per rank, of every part wanted from it
    wanted: dict[tuple[Any, tuple[int, ...]], list[int]] = {}
    for i in pos:
        h = leaves[i]
        for coords in _needed(h._placements, h._client.sizes):
            wanted.setdefault((h._client, coords), []).append(i)
    got: dict[tuple[int, tuple[int, ...]], torch.Tensor] = {}
    lock = threading.Lock()
    left = [len(wanted)]

    def finish() -> None:
        res = list(leaves)
        try:
            with _bare():
                for i in pos:
                    h = leaves[i]
                    parts = {c: got[(i, c)] for c in _needed(h._placements, h._client.sizes)}
                    res[i] = _assemble(parts, h._placements, h._client.sizes, tuple(h._fake.shape))
        except Exception as exc:
            out.set_exception(exc)
            return
        out.set_result(tree_unflatten(res, spec))

    for (client, coords), idx in wanted.items():
        inner = client.fetch([leaves[i]._id for i in idx], dict(zip(client.labels, coords)))

        def done(
            f: Future[list[torch.Tensor]], idx: list[int] = idx, coords: tuple[int, ...] = coords
        ) -> None:
            exc = f.exception()
            if exc is not None:
                if isinstance(exc, ActorError) and isinstance(exc.exception, TensorOpError):
                    exc = exc.exception
                if not out.done():
                    out.set_exception(exc)
                return
            with lock:
                for i, t in zip(idx, f.get()):
                    got[(i, coords)] = t
                left[0] -= 1
                last = left[0] == 0
            if last and not out.done():
                finish()

        inner.add_done_callback(done)
    return out


def _needed(placements: Placements, sizes: list[int]) -> list[tuple[int, ...]]:
    """The ranks whose parts make up the global tensor: coordinate 0 along replicated mesh
    dimensions, every coordinate along the others."""
    return [
        c
        for c in points(sizes)
        if all(ci == 0 or not isinstance(p, Replicate) for p, ci in zip(placements, c))
    ]


def _assemble(
    parts: dict[tuple[int, ...], torch.Tensor],
    placements: Placements,
    sizes: list[int],
    shape: tuple[int, ...],
) -> torch.Tensor:
    for k in reversed(range(len(sizes))):
        p = placements[k]
        groups: dict[tuple[int, ...], list[torch.Tensor]] = {}
        for c in sorted(parts):
            groups.setdefault(c[:k] + c[k + 1 :], []).append(parts[c])
        merged: dict[tuple[int, ...], torch.Tensor] = {}
        for rest, xs in groups.items():
            if isinstance(p, Shard):
                v = torch.cat(xs, dim=p.dim)
            elif isinstance(p, Partial):
                v = _reduce_parts(xs, p.reduce_op)
            else:
                v = xs[0]
            merged[rest] = v
        parts = merged
    (full,) = parts.values()
    if tuple(full.shape) != shape:
        raise ShardingError(
            f"fetch: the parts make a tensor of shape {list(full.shape)}, not {list(shape)}"
        )
    return full


def _reduce_parts(xs: list[torch.Tensor], op: str) -> torch.Tensor:
    s = torch.stack(xs)
    if op == "sum":
        return s.sum(0)
    if op == "avg":
        return (
            s.mean(0)
            if s.is_floating_point()
            else torch.div(s.sum(0), len(xs), rounding_mode="floor")
        )
    if op == "max":
        return s.amax(0)
    return s.amin(0)


def redistribute(t: Tensor, placements: Any) -> Tensor:
    """``t.redistribute(placements)``: a new handle of the same global tensor, placed anew, moved
    with collectives over the mesh dimensions that change (see ``_placement.plan_redistribute``).

    Raises:
        ShardingError: ``t`` has no placements, or the change is not supported (Partial to a
            Partial of another reduce_op).
    """
    src = t._placements
    if src is None:
        raise ShardingError(
            f"redistribute: {t!r} has no placements; give it some with monarch.from_local(t, placements)"
        )
    client = t._client
    shape = tuple(t._fake.shape)
    dst = normalize(placements, client.labels, len(shape))
    steps = plan_redistribute(shape, src, dst, client.sizes)
    out = _placed(_meta(shape, t._fake.dtype), client, dst)
    client.ensure_store()
    client.push((PLACE, out._id, t._id, shape, src, steps))
    return out


def from_local(t: Tensor, placements: Any, shape: Any = None) -> Tensor:
    """Declare that the ranks' tensors of the per-rank handle ``t`` are the parts of one global
    tensor placed as ``placements`` (DTensor's ``from_local``; nothing moves).

    Args:
        t: a handle without placements (e.g. made by ops inside ``activate()``).
        placements: one per mesh dimension, or ``{label: placement}``.
        shape: the global shape; None: ``t``'s shape times the mesh sizes along sharded
            dimensions (right for even shards only; give it for uneven ones).

    Returns:
        A placed handle naming the same tensors (``t`` stays usable).

    Raises:
        ShardingError: ``t`` already has placements, or ``shape`` does not fit.
    """
    if t._placements is not None:
        raise ShardingError(f"from_local: {t!r} already has placements {list(t._placements)}")
    client = t._client
    local = tuple(t._fake.shape)
    pls = normalize(placements, client.labels, len(local))
    if shape is None:
        gshape = list(local)
        for p, s in zip(pls, client.sizes):
            if isinstance(p, Shard):
                gshape[p.dim] *= s
        full = tuple(gshape)
    else:
        full = tuple(int(n) for n in shape)
        if len(full) != len(local):
            raise ShardingError(
                f"from_local: shape {list(full)} has not the {len(local)} dimensions of the local tensors"
            )
    region = local_region(full, pls, client.sizes, [0] * len(client.sizes))
    if [n for _, n in region] != list(local):
        raise ShardingError(
            f"from_local: rank 0's part of a {list(full)} tensor placed {list(pls)} has shape {[n for _, n in region]}, "
            f"not the local {list(local)}"
        )
    out = _placed(_meta(full, t._fake.dtype), client, pls)
    client.ensure_store()
    client.push((CALL, client.fn_id(_alias), (out._id,), (_ref(t),), {}))
    return out


def to_local(t: Tensor) -> Tensor:
    """``t.to_local()``: a per-rank handle (no placements) naming each rank's part of ``t``.

    Raises:
        ShardingError: ``t`` has no placements, or its parts differ in shape across ranks
            (uneven shards: a per-rank handle has one shape).
    """
    pls = t._placements
    if pls is None:
        raise ShardingError(f"to_local: {t!r} has no placements")
    client = t._client
    shape = tuple(t._fake.shape)
    if not is_even(shape, pls, client.sizes):
        raise ShardingError(
            f"to_local: the parts of a {list(shape)} tensor placed {list(pls)} differ in shape across ranks; "
            "redistribute to even placements, or use a remote function (it gets each rank's part)"
        )
    lshape = [n for _, n in local_region(shape, pls, client.sizes, [0] * len(client.sizes))]
    out = new_handle(_meta(lshape, t._fake.dtype), client, client.new_id())
    client.push((CALL, client.fn_id(_alias), (out._id,), (_ref(t),), {}))
    return out


def _ref(t: Tensor) -> Any:
    from ._wire import Ref

    return Ref(t._id)


def layouts_of(args: Any, kwargs: Any) -> tuple[tuple[int, Any], ...]:
    """The flat positions and layouts ``(token, shape, placements)`` of the placed handles in a
    remote function's arguments."""
    leaves, _ = tree_flatten((args, kwargs))
    return tuple(
        (i, (x._client.token, tuple(x._fake.shape), x._placements))
        for i, x in enumerate(leaves)
        if type(x) is Tensor and x._placements is not None
    )


for _f in (distribute, fetch, from_local):
    _f.__module__ = "monarch"
