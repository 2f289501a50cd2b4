"""How placements flow through torch ops on placed handles: pointwise ops, 2-D matmul,
transposes, ``sum``/``mean``. An op without a rule raises ``ShardingError`` (no implicit
redistribution); the rules follow ``torch.distributed.tensor``'s sharding propagation for
these ops. Stdlib only (called by ``_tensor.dispatch`` with shapes and placements).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .._core.errors import ShardingError
from ._placement import Partial, Placement, Placements, Replicate, Shard, is_even

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
