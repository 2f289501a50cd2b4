"""Rank-matched data loaders and trainers, actor to actor (plain Python actor API).

A data loader mesh and a trainer mesh are spawned on the same four procs. Every trainer is given
the whole loader mesh and keeps only the loader of its own rank
(``loaders.slice(**context().actor_instance.rank)``), so data flows loader -> trainer on the same
proc without passing through the client; the client only says "step".

Run: ``python examples/dataloader_trainer.py``.
"""

from __future__ import annotations

import sys
from typing import Any

from monarch.actor import Actor, ActorMesh, context, endpoint, this_host


class DataLoader(Actor):
    """Yields the batches of its rank's shard: batch i of rank r is ``[100 r + i] * 4``."""

    def __init__(self) -> None:
        self.rank = context().actor_instance.rank.rank
        self.i = 0

    @endpoint
    def next_batch(self) -> list[int]:
        batch = [100 * self.rank + self.i] * 4
        self.i += 1
        return batch


class Trainer(Actor):
    """Consumes batches from the loader of the same rank."""

    def __init__(self, loaders: ActorMesh[DataLoader]) -> None:
        self.rank: dict[str, int] = dict(context().actor_instance.rank)
        self.loader: Any = loaders.slice(**self.rank)
        self.seen: list[int] = []

    @endpoint
    def step(self) -> str:
        batch = self.loader.next_batch.call_one().get()
        self.seen.append(batch[0])
        return f"trainer {self.rank} (message rank {dict(context().message_rank)}) got batch {batch[0]}"

    @endpoint
    def seen_batches(self) -> list[int]:
        return self.seen


def main() -> int:
    procs = this_host().spawn_procs(per_host={"gpus": 4})
    try:
        loaders = procs.spawn("loaders", DataLoader)
        trainers = procs.spawn("trainers", Trainer, loaders)
        for _ in range(3):
            for line in trainers.step.call().get(timeout=60).values():
                print(line)
        seen = trainers.seen_batches.call().get(timeout=60)
    finally:
        procs.stop().get(30)
    ok = all(batches == [100 * p.rank + i for i in range(3)] for p, batches in seen.items())
    print(
        f"dataloader-trainer: {len(seen)} trainers each read only their own loader: {'ok' if ok else 'FAILED'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
