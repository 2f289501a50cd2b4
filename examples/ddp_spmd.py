"""Monarch's "DDP using SPMDActor" pattern on CPU: an unchanged torchrun-style DDP script
(gloo, ``init_process_group`` from the environment) trained on a 2x2 mesh of procs.

Run: python examples/ddp_spmd.py
"""

from __future__ import annotations

import sys


def train() -> None:
    """The torchrun-style script body (every rank runs it)."""
    import os

    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    model = DDP(torch.nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(rank)
    w = torch.arange(8, dtype=torch.float32) / 8
    for _step in range(30):
        x = torch.randn(32, 8, generator=g)
        loss = ((model(x).squeeze(1) - x @ w) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    # DDP keeps the replicas identical: every rank prints the same weights checksum
    print(
        f"rank {rank} local_rank {os.environ['LOCAL_RANK']} loss {loss.item():.4f} wsum {model.module.weight.sum().item():.6f}"
    )
    dist.destroy_process_group()


def main() -> None:
    from monarch.actor import this_host
    from monarch.tensor.spmd import run_spmd

    procs = this_host().spawn_procs(per_host={"hosts": 2, "gpus": 2})
    try:
        out = run_spmd(procs, __file__, ["--worker"], timeout_s=120)
        for rank in sorted(out):
            print(out[rank], end="")
    finally:
        procs.stop().get()


if __name__ == "__main__":
    if "--worker" in sys.argv:
        train()
    else:
        main()
