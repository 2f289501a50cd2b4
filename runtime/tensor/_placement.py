"""Placements of a distributed tensor over the dimensions of a ProcMesh, their geometry, and the
rules that carry them through ops.

A *placed* handle (``t.placements`` is a tuple, one placement per mesh dimension) stands for one
global tensor: its ``shape`` is the global shape, and each rank holds the part its placements
give it. ``Shard(d)`` splits tensor dimension ``d`` across the ranks of that mesh dimension with
``torch.chunk``'s rule (chunks of ``ceil(n / size)``; trailing ranks may hold fewer rows, or none,
as in ``torch.distributed.tensor``); several mesh dimensions sharding the same tensor dimension
split it left to right (the first mesh dimension outermost), as DTensor does. ``Replicate()``: every
rank of that dimension holds the same values. ``Partial(op)``: the global tensor is the reduction
(``op``) of the ranks' tensors along that dimension. The names and semantics are DTensor's
(``torch.distributed.tensor.Shard/Replicate/Partial``), whose objects are accepted too.

Stdlib only: the client, the workers and the placement rules share it.
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


# -- propagation through ops --------------------------------------------------------------------

# pointwise ops: the result lies like the (identically placed, same-shaped) inputs
_LINEAR = set("add sub subtract neg negative positive clone contiguous detach".split())
_SCALED = set("mul multiply div divide true_divide truediv".split())  # linear times a number
_POINTWISE = (
    _LINEAR
    | _SCALED
    | set(
        """abs acos asin atan ceil clamp clamp_min clamp_max cos cosh eq erf exp exp2 expm1 float
        double half bfloat16 floor floor_divide floordiv ge gelu gt le log log1p log2 logical_and
        logical_not logical_or lt maximum minimum ne pow reciprocal relu remainder mod round rsqrt
        sigmoid sign silu sin sinh sqrt square tan tanh trunc where and or xor bitwise_and
        bitwise_or bitwise_xor invert bitwise_not""".split()
    )
)
_MATMUL = {"matmul", "mm"}
_TRANSPOSE = {"t", "T", "transpose", "swapaxes", "swapdims"}
_REDUCTIONS = {"sum", "mean"}


def op_name(func: Any) -> str:
    """The base name of a torch function as it reaches ``__torch_function__``: ``torch.add``,
    ``Tensor.add``, ``Tensor.__add__``, ``Tensor.__radd__`` and ``Tensor.add_`` are all ``add``
    (``inplace`` tells the last apart); a property getter is named after its property."""
    name = getattr(func, "__name__", "") or ""
    if name == "__get__":
        name = getattr(getattr(func, "__self__", None), "__name__", "") or ""
    if name.startswith("__") and name.endswith("__"):
        name = name[2:-2]
        if name.startswith("i") and name[1:] in _POINTWISE:  # __iadd__
            name = name[1:]
        elif name.startswith("r") and name[1:] in _POINTWISE | _MATMUL:  # __radd__, __rmatmul__
            name = name[1:]
    if name.endswith("_") and not name.endswith("__"):
        name = name[:-1]
    return name


def _is_reflected(func: Any) -> bool:
    name = getattr(func, "__name__", "") or ""
    return name.startswith("__r") and name.endswith("__") and name[3:-2] in _POINTWISE | _MATMUL


def propagate(
    func: Any,
    tensor_args: list[tuple[tuple[int, ...], Placements | None]],
    other_args: list[Any],
    out_shapes: list[tuple[int, ...]],
    tensor_first: bool = True,
    *,
    call: tuple[Any, Any] = ((), {}),
    sizes: Sequence[int] = (),
) -> list[Placements]:
    """The placements of an op's tensor results, from its tensor inputs.

    Args:
        func: the torch function.
        tensor_args: ``(global_shape, placements)`` of each handle argument, in argument order
            (placements None: a handle without placements).
        other_args: the non-tensor leaves of the arguments (numbers, dims, ...).
        out_shapes: the global shape of each tensor result.
        tensor_first: the op's first positional argument is a tensor (``torch.div(2, t)`` is
            not linear in ``t``).
        call: the op's ``(args, kwargs)`` (reductions read ``dim`` and ``keepdim`` there).
        sizes: the mesh's sizes.

    Returns:
        One placements tuple per tensor result.

    Raises:
        ShardingError: the op has no rule for these placements (the message says what to do:
            ``redistribute`` to matching placements, or ``to_local()`` for per-rank compute).
    """
    name = op_name(func)
    pls = [p for _, p in tensor_args]
    if any(p is None for p in pls):
        raise ShardingError(
            f"{name}: mixes a tensor with placements and a per-rank tensor without them; give it "
            "placements with monarch.from_local(t, placements), or use t.to_local() on the other"
        )
    placed: list[Placements] = [p for p in pls if p is not None]
    if name in _POINTWISE:
        divides_tensor = tensor_first and not _is_reflected(func)  # t / 2, not 2 / t
        return _pointwise(name, tensor_args, placed, other_args, out_shapes, divides_tensor)
    if name in _REDUCTIONS and len(tensor_args) == 1:
        shape, p = tensor_args[0]
        assert p is not None
        return [_reduction(name, shape, p, call[0], call[1], sizes)]
    if name in _MATMUL:
        if len(tensor_args) != 2:
            raise ShardingError(f"{name}: expected two tensors")
        (sa, pa), (sb, pb) = tensor_args
        assert pa is not None and pb is not None
        if _is_reflected(func):
            (sa, pa), (sb, pb) = (sb, pb), (sa, pa)
        return [_matmul(sa, pa, sb, pb)]
    if name in _TRANSPOSE and len(tensor_args) == 1:
        shape, p = tensor_args[0]
        assert p is not None
        nd = len(shape)
        if name in ("t", "T"):
            if nd != 2:
                raise ShardingError(
                    f"{name}: placements are carried through a transpose of 2-D tensors only"
                )
            d0, d1 = 0, 1
        else:
            dims = [a for a in other_args if isinstance(a, int) and not isinstance(a, bool)]
            if len(dims) != 2:
                raise ShardingError(f"{name}: the two dimensions must be given as numbers")
            d0, d1 = (d % nd for d in dims)
        swap = {d0: d1, d1: d0}
        return [tuple(Shard(swap.get(q.dim, q.dim)) if isinstance(q, Shard) else q for q in p)]
    raise ShardingError(
        f"{name} has no placement rule (placements are carried through pointwise ops, 2-D matmul, "
        "transposes, sum and mean); redistribute the inputs (e.g. t.redistribute([Replicate()] * mesh.ndim)) or compute "
        "per rank on t.to_local()"
    )


def _pointwise(
    name: str,
    tensor_args: list[tuple[tuple[int, ...], Placements | None]],
    placed: list[Placements],
    other_args: list[Any],
    out_shapes: list[tuple[int, ...]],
    divides_tensor: bool,
) -> list[Placements]:
    first = placed[0]
    shape0 = tensor_args[0][0]
    for (shape, _), p in zip(tensor_args[1:], placed[1:]):
        if p != first:
            raise ShardingError(
                f"{name}: inputs lie differently ({list(first)} and {list(p)}); redistribute one to match the other"
            )
        if shape != shape0:
            raise ShardingError(
                f"{name}: inputs of shapes {list(shape0)} and {list(shape)} with placements need the same shape "
                "(no broadcasting across placed tensors)"
            )
    for s in out_shapes:
        if s != shape0:
            raise ShardingError(
                f"{name}: the result's shape {list(s)} differs from its inputs' {list(shape0)}"
            )
    partial = [q for q in first if isinstance(q, Partial)]
    if partial:
        linear = (
            name in _LINEAR
            and not other_args
            and all(q.reduce_op in ("sum", "avg") for q in partial)
        )
        scaled = (
            name in _SCALED
            and (name in ("mul", "multiply") or divides_tensor)
            and len(placed) == 1
            and all(q.reduce_op in ("sum", "avg") for q in partial)
            and all(isinstance(a, int | float) and not isinstance(a, bool) for a in other_args)
        )
        if name in ("add", "sub", "subtract") and len(placed) == 1:
            linear = False  # a Partial plus a number adds the number once per rank
        if not (linear or scaled):
            raise ShardingError(
                f"{name} of a Partial tensor is not the {name} of its reduction; redistribute it to "
                "Replicate() (or Shard) first"
            )
    return [first for _ in out_shapes]


def _reduction(
    name: str,
    shape: tuple[int, ...],
    pls: Placements,
    args: Any,
    kwargs: Any,
    sizes: Sequence[int],
) -> Placements:
    """``sum``/``mean`` over some dims: a sharded dim reduced away leaves a Partial (``sum``, or
    ``avg`` for a mean over even shards), the other shards move to the dim's new index."""
    nd = len(shape)
    dim = kwargs.get("dim", args[1] if len(args) > 1 else None)
    keepdim = bool(kwargs.get("keepdim", args[2] if len(args) > 2 else False))
    if dim is None or (isinstance(dim, list | tuple) and len(dim) == 0):
        dims = set(range(nd))
    elif isinstance(dim, int) and not isinstance(dim, bool):
        dims = {dim % nd} if nd else set()
    elif isinstance(dim, list | tuple) and all(isinstance(d, int) for d in dim):
        dims = {d % nd for d in dim}
    else:
        raise ShardingError(f"{name}: dim={dim!r} is not supported on a placed tensor")
    if name == "mean" and not is_even(shape, pls, sizes):
        raise ShardingError(
            f"mean of a tensor placed {list(pls)} with uneven shards is not the mean of the "
            "ranks' means; use sum and divide, or redistribute first"
        )
    out: list[Placement] = []
    for p in pls:
        if isinstance(p, Partial):
            if p.reduce_op not in ("sum", "avg"):
                raise ShardingError(f"{name} of a {p!r} tensor is not the {name} of its reduction")
            out.append(p)
        elif isinstance(p, Shard):
            if p.dim in dims:
                out.append(Partial("sum" if name == "sum" else "avg"))
            else:
                out.append(Shard(p.dim if keepdim else p.dim - sum(1 for d in dims if d < p.dim)))
        else:
            out.append(p)
    return tuple(out)


def _matmul(sa: tuple[int, ...], pa: Placements, sb: tuple[int, ...], pb: Placements) -> Placements:
    if len(sa) != 2 or len(sb) != 2:
        raise ShardingError(
            f"matmul: placements are carried through 2-D x 2-D products only (got {list(sa)} x {list(sb)})"
        )
    out: list[Placement] = []
    for qa, qb in zip(pa, pb):
        ra, rb = isinstance(qa, Replicate), isinstance(qb, Replicate)
        if ra and rb:
            out.append(Replicate())
        elif qa == Shard(0) and rb:
            out.append(Shard(0))
        elif ra and qb == Shard(1):
            out.append(Shard(1))
        elif qa == Shard(1) and qb == Shard(0):
            out.append(Partial())
        elif isinstance(qa, Partial) and rb and qa.reduce_op in ("sum", "avg"):
            out.append(qa)
        elif ra and isinstance(qb, Partial) and qb.reduce_op in ("sum", "avg"):
            out.append(qb)
        else:
            raise ShardingError(
                f"matmul: no rule for {qa!r} x {qb!r} on one mesh dimension (rules: R x R -> R, "
                "S(0) x R -> S(0), R x S(1) -> S(1), S(1) x S(0) -> Partial(), Partial x R -> Partial); "
                "redistribute an operand"
            )
    return tuple(out)


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
