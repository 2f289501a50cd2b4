"""Client side of ``Tensor.reduce``: argument checks, the result's metadata, the command.

Semantics follow Monarch's ``Tensor.reduce`` (python/monarch/common/tensor.py in Meta Monarch):
``stack`` adds a leading dimension of the group's size; ``scatter`` needs a leading dimension of
the group's size and removes it (a reduction) or keeps it (``stack``: all_to_all). A CUDA
tensor's reduce runs over NCCL groups (``_collectives.Groups``), a CPU tensor's over gloo.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from ._collectives import REDUCTIONS
from ._wire import REDUCE

if TYPE_CHECKING:
    from ._tensor import Tensor


def reduce(t: Tensor, dims: str | tuple[str, ...] | list[str], reduction: str, scatter: bool, mesh: Any, *, inplace: bool) -> Tensor:
    from ._tensor import meta_empty, new_handle

    client = t._client
    if mesh is not None:
        raise ValueError("reduce(mesh=...) is not supported: results stay on the tensor's mesh")
    names = (dims,) if isinstance(dims, str) else tuple(dims)
    for d in names:
        if d not in client.labels:
            raise KeyError(f"dim {d!r} not found in mesh {dict(zip(client.labels, client.sizes))}")
    if not names:
        names = tuple(client.labels)
    if len(set(names)) != len(names):
        raise ValueError(f"reducing the same dimension twice: {names}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction {reduction!r} not supported, reductions are {REDUCTIONS}")
    if len(names) > 1 and (reduction == "stack" or scatter):
        raise ValueError(f"reduction {reduction!r} or scatter={scatter} is not valid for multiple dimensions")
    ordered = tuple(label for label in client.labels if label in names)
    g = math.prod(s for label, s in zip(client.labels, client.sizes) if label in names)
    fake = t._fake
    if scatter:
        if fake.ndim == 0 or fake.size(0) != g:
            raise TypeError(f"when scattering, the outermost dimension of a tensor of size {list(fake.shape)} must equal the group size ({g})")
        shape = list(fake.shape) if reduction == "stack" else list(fake.shape[1:])
    elif reduction == "stack":
        shape = [g, *fake.shape]
    else:
        shape = list(fake.shape)
    if inplace:
        if shape != list(fake.shape):
            raise ValueError(f"reduction {reduction!r} with scatter={scatter} changes the shape: it cannot be done in place")
        out = t
    else:
        out = new_handle(meta_empty(shape, fake.dtype), client, client.new_id(), t._dev)
    client.ensure_store()
    cmd: tuple[Any, ...] = (REDUCE, out._id, t._id, ordered, reduction, bool(scatter), inplace, tuple(fake.shape), fake.dtype)
    if t._dev != "cpu":  # NCCL groups for CUDA tensors (a CPU reduce's command is as before)
        cmd = (*cmd, t._dev)
    client.push(cmd)
    return out
