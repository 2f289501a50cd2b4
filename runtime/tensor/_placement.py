"""Placements of a distributed tensor over the dimensions of a ProcMesh, their geometry, and the
plan of ``redistribute`` (how they flow through ops: ``_rules``).

A *placed* handle (``t.placements`` is a tuple, one placement per mesh dimension) stands for one
global tensor: its ``shape`` is the global shape, and each rank holds the part its placements
give it. ``Shard(d)`` splits tensor dimension ``d`` across the ranks of that mesh dimension with
``torch.chunk``'s rule (chunks of ``ceil(n / size)``; trailing ranks may hold fewer rows, or none,
as in ``torch.distributed.tensor``); several mesh dimensions sharding the same tensor dimension
split it left to right (the first mesh dimension outermost), as DTensor does. ``Replicate()``: every
rank of that dimension holds the same values. ``Partial(op)``: the global tensor is the reduction
(``op``) of the ranks' tensors along that dimension. The names and semantics are DTensor's
(``torch.distributed.tensor.Shard/Replicate/Partial``), whose objects are accepted too.

Stdlib only: the client, the workers and ``_rules`` share it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .._core.errors import ShardingError

PARTIAL_OPS = ("sum", "avg", "max", "min")


class Placement:
    """How a distributed tensor lies along one mesh dimension (base class)."""

    __slots__ = ()

    def is_shard(self, dim: int | None = None) -> bool:
        """True for ``Shard`` (of tensor dimension ``dim`` when given)."""
        return False

    def is_replicate(self) -> bool:
        return False

    def is_partial(self) -> bool:
        return False


class Shard(Placement):
    """Tensor dimension ``dim`` is split across the ranks of the mesh dimension (``torch.chunk``'s
    rule: uneven sizes leave the trailing ranks smaller, possibly empty).

    Args:
        dim: the tensor dimension; negative counts from the end (normalized when the placement
            meets a tensor).
    """

    __slots__ = ("dim",)

    def __init__(self, dim: int) -> None:
        if not isinstance(dim, int) or isinstance(dim, bool):
            raise TypeError(f"Shard(dim): dim must be an int, not {type(dim).__name__}")
        self.dim = dim

    def is_shard(self, dim: int | None = None) -> bool:
        return dim is None or dim == self.dim

    def __eq__(self, other: object) -> bool:
        return type(other) is Shard and other.dim == self.dim

    def __hash__(self) -> int:
        return hash((Shard, self.dim))

    def __repr__(self) -> str:
        return f"Shard({self.dim})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (Shard, (self.dim,))


class Replicate(Placement):
    """Every rank of the mesh dimension holds the same (whole, along this dimension) tensor."""

    __slots__ = ()

    def is_replicate(self) -> bool:
        return True

    def __eq__(self, other: object) -> bool:
        return type(other) is Replicate

    def __hash__(self) -> int:
        return hash(Replicate)

    def __repr__(self) -> str:
        return "Replicate()"

    def __reduce__(self) -> tuple[Any, ...]:
        return (Replicate, ())


class Partial(Placement):
    """The global tensor is the reduction of the ranks' tensors along the mesh dimension (a
    pending reduction, e.g. after a matmul whose contraction dimension was sharded).

    Args:
        reduce_op: ``"sum"`` (default), ``"avg"``, ``"max"`` or ``"min"``.

    Raises:
        ValueError: another reduce_op.
    """

    __slots__ = ("reduce_op",)

    def __init__(self, reduce_op: str = "sum") -> None:
        if reduce_op not in PARTIAL_OPS:
            raise ValueError(f"Partial({reduce_op!r}): reduce_op must be one of {PARTIAL_OPS}")
        self.reduce_op = reduce_op

    def is_partial(self) -> bool:
        return True

    def __eq__(self, other: object) -> bool:
        return type(other) is Partial and other.reduce_op == self.reduce_op

    def __hash__(self) -> int:
        return hash((Partial, self.reduce_op))

    def __repr__(self) -> str:
        return "Partial()" if self.reduce_op == "sum" else f"Partial({self.reduce_op!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (Partial, (self.reduce_op,))


Placement.__module__ = "monarch.tensor"
for _c in (Shard, Replicate, Partial):
    _c.__module__ = "monarch"

Placements = tuple[Placement, ...]


def as_placement(p: Any) -> Placement:
    """Ours for one of ours or one of ``torch.distributed.tensor``'s placements.

    Raises:
        TypeError: anything else.
    """
    if isinstance(p, Placement):
        return p
    name = type(p).__name__
    if type(p).__module__.startswith("torch.distributed"):
        if name == "Shard" and type(getattr(p, "dim", None)) is int:
            return Shard(p.dim)
        if name == "Replicate":
            return Replicate()
        if name == "Partial":
            return Partial(getattr(p, "reduce_op", "sum"))
    raise TypeError(
        f"{p!r} is not a placement: use monarch.Shard(d), monarch.Replicate() or monarch.Partial()"
    )


def normalize(placements: Any, labels: Sequence[str], ndim: int) -> Placements:
    """Validate ``placements`` for a mesh with dimensions ``labels`` and a tensor of ``ndim``.

    Args:
        placements: a sequence with one placement per mesh dimension (mesh order), or a dict
            ``{label: placement}`` where a label left out means ``Replicate()``.
        labels: the mesh's dimension names.
        ndim: the tensor's number of dimensions (``Shard(-1)`` becomes ``Shard(ndim - 1)``).

    Returns:
        One placement per mesh dimension, shard dims non-negative.

    Raises:
        ShardingError: the wrong number of placements, an unknown label, or a shard dim out of
            range.
        TypeError: an entry is not a placement.
    """
    if isinstance(placements, dict):
        unknown = [k for k in placements if k not in labels]
        if unknown:
            raise ShardingError(
                f"placements name {unknown}, which are not dimensions of the mesh {list(labels)}"
            )
        seq = [placements.get(label, Replicate()) for label in labels]
    elif isinstance(placements, Placement) or not isinstance(placements, Sequence):
        raise TypeError(
            f"placements must be a sequence (one per mesh dimension {list(labels)}) or a dict, not {placements!r}"
        )
    else:
        seq = list(placements)
    if len(seq) != len(labels):
        raise ShardingError(
            f"{len(seq)} placements given for a mesh with {len(labels)} dimensions {list(labels)}"
        )
    out: list[Placement] = []
    for p in seq:
        q = as_placement(p)
        if isinstance(q, Shard):
            d = q.dim + ndim if q.dim < 0 else q.dim
            if not 0 <= d < ndim:
                raise ShardingError(f"{q!r} is out of range for a tensor of {ndim} dimensions")
            q = Shard(d) if d != q.dim else q
        out.append(q)
    return tuple(out)


# -- geometry -----------------------------------------------------------------------------------


def chunk_range(n: int, parts: int, i: int) -> tuple[int, int]:
    """``(start, length)`` of chunk ``i`` when ``n`` rows are split in ``parts`` (``torch.chunk``:
    chunks of ``ceil(n / parts)``; the last non-empty chunk may be shorter, later ones empty)."""
    size = -(-n // parts) if n else 0
    start = min(i * size, n)
    return start, max(0, min(size, n - start))


def local_region(
    shape: Sequence[int], placements: Placements, sizes: Sequence[int], coords: Sequence[int]
) -> list[tuple[int, int]]:
    """The part of the global tensor the rank at ``coords`` holds: ``(start, length)`` per
    tensor dimension (mesh dimensions sharding the same tensor dimension split it left to
    right). Partial and replicated mesh dimensions do not narrow it."""
    region = [(0, n) for n in shape]
    for p, size, c in zip(placements, sizes, coords):
        if isinstance(p, Shard):
            start, length = region[p.dim]
            s, n = chunk_range(length, size, c)
            region[p.dim] = (start + s, n)
    return region


def is_even(shape: Sequence[int], placements: Placements, sizes: Sequence[int]) -> bool:
    """True when every rank holds a part of the same shape."""
    first = None
    for coords in points(sizes):
        lens = [n for _, n in local_region(shape, placements, sizes, coords)]
        if first is None:
            first = lens
        elif lens != first:
            return False
    return True


def points(sizes: Sequence[int]) -> list[tuple[int, ...]]:
    """Every coordinate tuple of a mesh of ``sizes``, row-major."""
    out: list[tuple[int, ...]] = [()]
    for s in sizes:
        out = [(*c, i) for c in out for i in range(s)]
    return out


# -- redistribute: the plan -----------------------------------------------------------------------


def plan_redistribute(
    shape: Sequence[int], src: Placements, dst: Placements, sizes: Sequence[int]
) -> list[tuple[Any, ...]]:
    """The steps that take a tensor of global ``shape`` from ``src`` to ``dst`` placements, each
    over one mesh dimension; the workers run them in order (``_redistribute.run``).

    Steps: ``("gather", k, d)`` Shard(d) -> Replicate (all_gather), ``("alltoall", k, d, e)``
    Shard(d) -> Shard(e), ``("allreduce", k, op)`` Partial -> Replicate, ``("reduce_scatter", k, d,
    op)`` Partial -> Shard(d), ``("chunk", k, d)`` Replicate -> Shard(d) (local, no communication),
    ``("partial", k, op)`` Replicate -> Partial (local). Shards change innermost mesh dimension
    first: a mesh dimension that shards a tensor dimension which a mesh dimension after it also
    shards is first gathered with it, and both are chunked again left to right.

    Raises:
        ShardingError: Partial to a Partial of another reduce_op.
    """
    m = len(src)
    for k in range(m):
        if isinstance(src[k], Partial) and isinstance(dst[k], Partial) and src[k] != dst[k]:
            raise ShardingError(
                f"redistribute: {src[k]!r} to {dst[k]!r} is not supported (go through Replicate())"
            )

    def shards(d: int, pls: Placements, but: int) -> bool:
        return any(isinstance(q, Shard) and q.dim == d for j, q in enumerate(pls) if j != but)

    def alltoall_ok(k: int) -> bool:
        s, t = src[k], dst[k]
        if not (isinstance(s, Shard) and isinstance(t, Shard)):
            return False
        g = sizes[k]
        return (
            not any(shards(d, pls, k) for d in (s.dim, t.dim) for pls in (src, dst))
            and shape[s.dim] % g == 0
            and shape[t.dim] % g == 0
        )

    gather = {k for k in range(m) if isinstance(src[k], Shard) and src[k] != dst[k]}
    changed = True
    while changed:
        changed = False
        for k in range(m):
            dims: list[int] = []
            s, t = src[k], dst[k]
            if k in gather and isinstance(s, Shard):
                dims.append(s.dim)
            if isinstance(t, Shard) and t != s:
                dims.append(t.dim)
            for d in dims:
                for j in range(k + 1, m):
                    if j not in gather and src[j] == Shard(d):
                        gather.add(j)
                        changed = True
    cur = list(src)
    steps: list[tuple[Any, ...]] = []
    for k in reversed(range(m)):
        if k not in gather:
            continue
        s = cur[k]
        assert isinstance(s, Shard)
        t = dst[k]
        if isinstance(t, Shard) and alltoall_ok(k):
            steps.append(("alltoall", k, s.dim, t.dim))
            cur[k] = t
        else:
            steps.append(("gather", k, s.dim))
            cur[k] = Replicate()
    for k in range(m):
        s, t = cur[k], dst[k]
        if isinstance(s, Partial) and s != t:
            if isinstance(t, Shard) and not shards(t.dim, src, k) and not shards(t.dim, dst, k):
                steps.append(("reduce_scatter", k, t.dim, s.reduce_op))
                cur[k] = t
            else:
                steps.append(("allreduce", k, s.reduce_op))
                cur[k] = Replicate()
    for k in range(m):
        s, t = cur[k], dst[k]
        if isinstance(s, Replicate) and isinstance(t, Shard):
            steps.append(("chunk", k, t.dim))
            cur[k] = t
        elif isinstance(s, Replicate) and isinstance(t, Partial):
            steps.append(("partial", k, t.reduce_op))
            cur[k] = t
    assert tuple(cur) == tuple(dst), (cur, dst)
    return steps
