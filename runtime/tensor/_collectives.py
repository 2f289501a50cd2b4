"""Worker side of ``Tensor.reduce``: process groups per named mesh dimension (gloo for CPU
tensors, NCCL for CUDA tensors), and the reductions over them.

Every rank of the mesh receives the same command stream, so every rank asks for the same groups
in the same order; each rank builds only the group it belongs to (a ``ProcessGroupGloo`` or
``ProcessGroupNCCL`` over a ``PrefixStore`` named after the backend, the dims and the group's
index), so no global default group is needed and several points packed into one OS process do
not clash. gloo (torch 2.13) rejects ``[G, *shape]`` outputs, so stack/scatter work on lists of
``shape`` tensors (see DESIGN.md). Every tensor a collective uses (the poison flags too) lives on
the device of the data: NCCL takes CUDA tensors only.
"""

from __future__ import annotations

import ctypes
import datetime
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist

REDUCE_OPS: dict[str, Any] = {
    "sum": dist.ReduceOp.SUM,
    "avg": dist.ReduceOp.AVG,
    "product": dist.ReduceOp.PRODUCT,
    "min": dist.ReduceOp.MIN,
    "max": dist.ReduceOp.MAX,
    "band": dist.ReduceOp.BAND,
    "bor": dist.ReduceOp.BOR,
    "bxor": dist.ReduceOp.BXOR,
}
REDUCTIONS = (*REDUCE_OPS, "stack")


def group_layout(labels: Sequence[str], sizes: Sequence[int], coords: Sequence[int], dims: Sequence[str]) -> tuple[int, int, int]:
    """Which group along ``dims`` the point at ``coords`` belongs to.

    Returns:
        ``(group_index, rank_in_group, group_size)``: points that differ only in ``dims`` share
        a group index; the rank in the group is row-major over ``dims`` in the mesh's order.
    """
    gi = 0
    ri = 0
    g = 1
    for label, size, c in zip(labels, sizes, coords):
        if label in dims:
            ri = ri * size + c
            g *= size
        else:
            gi = gi * size + c
    return gi, ri, g


class Groups:
    """The process groups of one worker, built on first use (one per distinct ``dims`` and
    backend).

    Args:
        labels: the mesh's dimension names.
        sizes: its sizes.
        coords: this rank's coordinates.
        timeout_s: bound on every collective and on the rendezvous of a new group.
        device: this rank's CUDA device (``cuda:LOCAL_RANK``), None without CUDA: the NCCL
            groups' device.
    """

    def __init__(
        self,
        labels: Sequence[str],
        sizes: Sequence[int],
        coords: Sequence[int],
        timeout_s: float,
        device: Any = None,
    ) -> None:
        self._labels = list(labels)
        self._sizes = list(sizes)
        self._coords = list(coords)
        self._timeout = datetime.timedelta(seconds=timeout_s)
        self._store: Any = None
        self._groups: dict[Any, tuple[Any, int, int]] = {}
        self._generation = 0
        self.device = device

    def set_store(self, host: str, port: int) -> None:
        world = math.prod(self._sizes)
        self._store = dist.TCPStore(  # type: ignore[attr-defined]  # exported by torch.distributed at run time
            host, port, world, False, timeout=self._timeout)

    def get(self, dims: tuple[str, ...], backend: str = "gloo") -> tuple[Any, int, int]:
        """``(process_group, rank_in_group, group_size)`` for ``dims`` (mesh order).

        Args:
            dims: the mesh dimensions the group spans.
            backend: ``"gloo"`` (CPU tensors) or ``"nccl"`` (CUDA tensors).

        Raises:
            RuntimeError: no TCPStore was announced; NCCL without CUDA or without NCCL in this
                torch; two members of an NCCL group on one GPU.
        """
        key: Any = dims if backend == "gloo" else (dims, backend)
        hit = self._groups.get(key)
        if hit is not None:
            return hit
        if self._store is None:
            raise RuntimeError("no TCPStore for collectives was announced to this worker")
        gi, ri, g = group_layout(self._labels, self._sizes, self._coords, dims)
        if backend == "gloo":
            prefix = f"monarch.tensor/{self._generation}/{','.join(dims)}/{gi}"
            store = dist.PrefixStore(prefix, self._store)  # type: ignore[attr-defined]  # as TCPStore
            pg = dist.ProcessGroupGloo(store, ri, g, self._timeout)
        elif backend == "nccl":
            from ._devices import nccl_group

            prefix = f"monarch.tensor/{self._generation}/nccl/{','.join(dims)}/{gi}"
            store = dist.PrefixStore(prefix, self._store)  # type: ignore[attr-defined]  # as TCPStore
            pg = nccl_group(store, ri, g, self._timeout, self.device, dims)
        else:
            raise ValueError(f"unknown collective backend {backend!r}")
        self._groups[key] = (pg, ri, g)
        return pg, ri, g

    def drop(self, dims: tuple[str, ...], backend: str = "gloo") -> None:
        """Forget a group after a failed collective (a gloo group that missed a collective is
        poisoned; an NCCL communicator is aborted); the next use builds a new one under a new
        prefix."""
        hit = self._groups.pop(dims if backend == "gloo" else (dims, backend), None)
        if hit is not None:
            self._generation += 1
            if backend == "nccl":
                from ._devices import abort_nccl

                abort_nccl(hit[0])


def flags_any(pg: Any, ri: int, g: int, bad: bool, device: Any = None) -> list[int]:
    """All-reduce one flag per member: the group ranks whose input is poisoned (the flags on
    ``device``: the data's, None for the CPU)."""
    flags = torch.zeros(g, dtype=torch.int32, device=device)
    if bad:
        flags[ri] = 1
    opts = dist.AllreduceOptions()
    opts.reduceOp = dist.ReduceOp.SUM  # type: ignore[assignment]  # the stubs type the enum member as RedOpType
    pg.allreduce([flags], opts).wait()
    return _bad_ranks(flags)


def _bad_ranks(flags: torch.Tensor) -> list[int]:
    if flags.device.type != "cpu":  # one copy to read (it waits for the collective's stream)
        flags = flags.cpu()
    return [i for i, f in enumerate(flags.tolist()) if f]


def _copy(t: torch.Tensor) -> torch.Tensor:
    """A copy of the contiguous tensor ``t``, made by one memcpy on this thread when ``t`` is on
    the CPU: ``clone`` wakes torch's OpenMP pool, and with the cores shared by several procs
    that wake-up cost up to ~100x the copy itself here (7 ms against 0.07 ms for 4 MiB)."""
    if t.device.type != "cpu" or not t.is_contiguous():
        return t.clone()
    out = torch.empty_like(t, memory_format=torch.contiguous_format)
    ctypes.memmove(out.data_ptr(), t.data_ptr(), t.numel() * t.element_size())
    return out


def allreduce_checked(
    pg: Any,
    ri: int,
    g: int,
    t: torch.Tensor | None,
    shape: tuple[int, ...],
    dtype: torch.dtype,
    reduction: str,
    inplace: bool,
    device: Any = None,
) -> tuple[list[int], torch.Tensor]:
    """One rank's all_reduce of ``t`` (None: this rank's input is poisoned; it then sends zeros
    of ``shape``/``dtype`` so that the group's collectives stay matched), with the poison flags
    all-reduced concurrently: both are queued before either is waited on, which saves a hand-off
    to gloo's thread and back per reduce (the flags' round trip hides behind the data's).
    ``device``: where the flags and a poisoned rank's zeros live (the data's device; None: CPU).

    Returns:
        ``(bad, out)``: the group ranks whose input is poisoned (``out`` is then meaningless),
        and the result (``t`` itself for a contiguous ``t`` with ``inplace``).
    """
    flags = torch.zeros(g, dtype=torch.int32, device=device)
    if t is None:
        flags[ri] = 1
        out = torch.zeros(shape, dtype=dtype, device=device)
    else:
        t = t.detach().contiguous()
        out = t if inplace else _copy(t)
    fopts = dist.AllreduceOptions()
    fopts.reduceOp = dist.ReduceOp.SUM  # type: ignore[assignment]  # the stubs type the enum member as RedOpType
    opts = dist.AllreduceOptions()
    opts.reduceOp = REDUCE_OPS[reduction]
    fwork = pg.allreduce([flags], fopts)
    try:
        work = pg.allreduce([out], opts)
    finally:
        fwork.wait()  # raises first when the group failed; the data's work fails with it
    work.wait()
    return _bad_ranks(flags), out


def reduce_tensor(
    pg: Any, g: int, t: torch.Tensor, reduction: str, scatter: bool, inplace: bool = False
) -> torch.Tensor:
    """One rank's part of Monarch's ``reduce`` (all_reduce, all_gather, reduce_scatter,
    all_to_all) of its local ``t`` over the group ``pg`` of ``g`` members. With ``inplace``, an
    all_reduce of a contiguous ``t`` runs on ``t``'s own memory (the result then shares it)."""
    t = t.detach().contiguous()
    if reduction == "stack":
        if scatter:  # all_to_all: out[j] = member j's t[me]
            out = torch.empty_like(t)
            pg.alltoall_base(out, t, [], [], dist.AllToAllOptions()).wait()
            return out
        outs = [torch.empty_like(t) for _ in range(g)]
        pg.allgather([outs], [t]).wait()
        return torch.stack(outs)
    op = REDUCE_OPS[reduction]
    if scatter:  # reduce_scatter: out = reduction over members of their t[me]
        parts = [p.contiguous() for p in t.unbind(0)]
        out = torch.empty_like(parts[0])
        ropts = dist.ReduceScatterOptions()
        ropts.reduceOp = op
        pg.reduce_scatter([out], [parts], ropts).wait()
        return out
    out = t if inplace else _copy(t)
    opts = dist.AllreduceOptions()
    opts.reduceOp = op
    pg.allreduce([out], opts).wait()
    return out
