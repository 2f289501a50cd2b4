"""Uses of a generated ``$M.rref`` endpoint that mypy --strict must accept (test_rref_idl.py)."""

from __future__ import annotations

import monarch
import torch
from gencases.tensor_rref import Sharder, SharderMesh
from monarch import stubs
from monarch.actor import ProcMesh


class Impl(Sharder):
    def shard(self, n: int, scale: float) -> torch.Tensor:
        return torch.arange(n) * scale

    def ones(self, n: int) -> torch.Tensor:
        return torch.ones(n, dtype=torch.float64)

    def count(self) -> int:
        return 0


def uses(procs: ProcMesh) -> tuple[torch.Tensor, int]:
    sharders: SharderMesh = procs.spawn("sharders", Impl)
    with procs.activate():
        t: stubs.TensorHandle = sharders.shard.rref(4, 2.0)
        total = t.reduce("gpus", "sum")
        doubled: torch.Tensor = total * 2
        later = sharders.ones.rref(n=3)
        handle: stubs.TensorHandle = monarch.Tensor.reduce(later, "gpus")  # monarch.Tensor is one
    got: torch.Tensor = monarch.fetch_shard(doubled, gpus=1).get()
    sent: torch.Tensor = sharders.shard.call_one(4, 1.0).get()  # the other adverbs as before
    del handle, sent
    return got, sharders.count.call().get().item(gpus=0)
