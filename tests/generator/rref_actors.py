"""An implementation of the ``tensor_rref`` golden case's ``Sharder`` (importable by spawned
procs; the case package comes from ``case_actors.ensure_gencases``)."""

from __future__ import annotations

import torch
from monarch.actor import context

from tests.generator.case_actors import ensure_gencases

ensure_gencases()

from gencases.tensor_rref import Sharder  # noqa: E402


class RankSharder(Sharder):
    """Makes per-rank tensors; counts the calls it ran."""

    def __init__(self) -> None:
        self.calls = 0

    def shard(self, n: int, scale: float) -> torch.Tensor:
        self.calls += 1
        rank = context().actor_instance.rank.rank
        return torch.arange(n, dtype=torch.float32) * scale * (rank + 1)

    def ones(self, n: int) -> torch.Tensor:
        self.calls += 1
        if n == 0:
            raise ValueError("n must be positive")
        return torch.full((n,), float(self.calls), dtype=torch.float64)

    def count(self) -> int:
        return self.calls
