"""Worker side of the GPU path: each rank's CUDA device and its NCCL groups.

A rank's device is ``cuda:LOCAL_RANK``, LOCAL_RANK being its coordinate on the mesh's last
dimension (the per-host one, as ``monarch.tensor.spmd`` and torchrun have it), modulo the
number of CUDA devices the proc sees (a proc given one device through ``CUDA_VISIBLE_DEVICES``
uses ``cuda:0``). NCCL needs one GPU per member of a communicator, so an NCCL group checks that
its members' GPUs differ before it is built (on one machine, mesh dimensions other than the last
map several ranks to one device) and says so instead of letting NCCL fail or hang.

Written against torch 2.13's ``ProcessGroupNCCL(store, rank, size, options)``. ``rank_device``
runs at a worker's first batch (where CUDA is available it initialises CUDA there, as Monarch's
workers do at start); the NCCL functions at the first collective over CUDA tensors.
"""

from __future__ import annotations

import datetime
import socket
from typing import Any

import torch
import torch.distributed as dist


def cuda_missing() -> str:
    """Why this proc has no CUDA, in words (for errors)."""
    return (
        f"CUDA is not available on this rank (torch {torch.__version__}: "
        "torch.cuda.is_available() is False)"
    )


def rank_device(local_rank: int) -> torch.device | None:
    """This rank's CUDA device, made current on the calling thread; None without CUDA.

    Args:
        local_rank: the rank's coordinate on the mesh's last dimension.
    """
    if not torch.cuda.is_available():
        return None
    count = torch.cuda.device_count()
    dev = torch.device("cuda", local_rank % count)
    torch.cuda.set_device(dev)
    return dev


def device_info(local_rank: int) -> dict[str, Any]:
    """What a rank reports about CUDA (the client's check before the first CUDA op)."""
    available = torch.cuda.is_available()
    count = torch.cuda.device_count() if available else 0
    return {
        "available": available,
        "count": count,
        "index": local_rank % count if count else None,
        "torch": torch.__version__,
        "nccl": dist.is_nccl_available(),
        "host": socket.gethostname(),
    }


def _identity(device: torch.device) -> str:
    props = torch.cuda.get_device_properties(device)
    uuid = getattr(props, "uuid", None)
    return f"{socket.gethostname()}/{uuid if uuid is not None else device.index}"


def nccl_group(
    store: Any,
    rank: int,
    size: int,
    timeout: datetime.timedelta,
    device: torch.device | None,
    dims: tuple[str, ...],
) -> Any:
    """A ``ProcessGroupNCCL`` backend for this rank's group along ``dims``.

    Args:
        store: the group's ``PrefixStore`` (every member uses the same prefix).
        rank: this rank's rank in the group.
        size: the group's size.
        timeout: bound on the members' rendezvous and on every collective.
        device: this rank's CUDA device (``rank_device``); None: no CUDA here.
        dims: the mesh dimensions the group spans (for errors).

    Raises:
        RuntimeError: no CUDA on this rank, no NCCL in this torch, or two members on one GPU.
    """
    if device is None:
        raise RuntimeError(f"an NCCL collective over {dims}: {cuda_missing()}")
    if not dist.is_nccl_available():
        raise RuntimeError(
            f"an NCCL collective over {dims}: this torch ({torch.__version__}) is built without NCCL"
        )
    mine = _identity(device)
    store.set(f"gpu/{rank}", mine)
    gpus = [store.get(f"gpu/{j}").decode() for j in range(size)]  # waits for every member
    seen: dict[str, list[int]] = {}
    for j, ident in enumerate(gpus):
        seen.setdefault(ident, []).append(j)
    shared = [ranks for ranks in seen.values() if len(ranks) > 1]
    if shared:
        raise RuntimeError(
            f"NCCL needs one GPU per rank, but group ranks {shared[0]} along {dims} share one "
            f"({gpus[shared[0][0]]}; this proc sees {torch.cuda.device_count()} CUDA devices): "
            "spread the ranks over more GPUs (or hosts), or keep such tensors on the CPU (gloo)"
        )
    opts = dist.ProcessGroupNCCL.Options()
    opts.is_high_priority_stream = False
    opts._timeout = timeout
    return dist.ProcessGroupNCCL(store, rank, size, opts)


def abort_nccl(pg: Any) -> None:
    """Abort a failed NCCL communicator (its collectives may still be queued on the GPU)."""
    abort = getattr(pg, "abort", None)
    if abort is not None:
        try:
            abort()
        except Exception:  # best effort: the group is dropped either way
            pass
