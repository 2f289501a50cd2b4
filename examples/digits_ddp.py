"""The digits job's ``--mode ddp``: each trainer is a ``torch.distributed`` rank (gloo, env set
by ``SPMDActor``'s variables) and wraps its model in DDP, so gradients are all-reduced among
the trainers inside the mesh; the client only drives steps and reads the loss.

Used by ``train_digits.py --mode ddp``; ``train_ddp(procs, steps)`` returns the held-out accuracy.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from monarch.actor import ProcMesh, endpoint
from monarch.tensor.spmd import SPMDActor

SEED = 0


class DDPTrainer(SPMDActor):
    """One DDP replica: a shard of the training split, the full model, gloo all-reduce."""

    @endpoint
    def init(self, master_addr: str, master_port: int, lr: float, batch_size: int) -> None:
        import os

        import torch
        import torch.distributed as dist
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
        from torch.nn.parallel import DistributedDataParallel

        os.environ.update(self._env(master_addr, master_port))
        torch.set_num_threads(1)
        dist.init_process_group("gloo")
        x, y = load_digits(return_X_y=True)
        x_tr, x_te, y_tr, y_te = train_test_split(
            x, y, test_size=0.25, random_state=SEED, stratify=y
        )
        r, w = self.rank, self.world_size
        self.x = torch.tensor(x_tr[r::w] / 16.0, dtype=torch.float32)
        self.y = torch.tensor(y_tr[r::w], dtype=torch.int64)
        self.x_te = torch.tensor(x_te[r::w] / 16.0, dtype=torch.float32)
        self.y_te = torch.tensor(y_te[r::w], dtype=torch.int64)
        torch.manual_seed(
            SEED
        )  # the same initial weights on every rank (DDP also broadcasts rank 0's)
        model = torch.nn.Sequential(
            torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10)
        )
        self.model = DistributedDataParallel(model)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=lr)
        self.batch_size = batch_size

    @endpoint
    def train(self, step: int) -> float:
        import torch

        n = self.x.shape[0]
        i = (step * self.batch_size) % n
        idx = torch.arange(i, i + self.batch_size) % n
        self.opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(self.model(self.x[idx]), self.y[idx])
        torch.autograd.backward(loss)  # DDP all-reduces the gradients among the trainers here
        self.opt.step()
        return float(loss.detach())

    @endpoint
    def evaluate(self) -> tuple[int, int]:
        import torch

        with torch.no_grad():
            pred = self.model.module(self.x_te).argmax(dim=1)
        return int((pred == self.y_te).sum()), int(self.y_te.shape[0])

    @endpoint
    def close(self) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def train_ddp(
    procs: ProcMesh,
    steps: int = 300,
    lr: float = 0.01,
    batch_size: int = 32,
    progress: Callable[[int, float], Any] | None = None,
) -> float:
    """Train the digits model with DDP on every proc of ``procs``; the client drives the steps.

    Args:
        procs: the trainers' mesh (its last dimension is the per-host one).
        steps: optimizer steps.
        lr: Adam's learning rate.
        batch_size: examples per trainer per step.
        progress: called with ``(step, mean loss)`` after each step.

    Returns:
        The held-out accuracy in [0, 1].
    """
    trainers: Any = procs.spawn("ddp_trainers", DDPTrainer)
    addr, port = (
        trainers.slice(**dict.fromkeys(procs.extent.labels, 0)).get_host_port.call_one(None).get(60)
    )
    trainers.init.call(addr, port, lr, batch_size).get(120)
    try:
        for step in range(steps):
            losses = list(trainers.train.call(step).get(60).values())
            if progress is not None:
                progress(step, sum(losses) / len(losses))
        counts = list(trainers.evaluate.call().get(60).values())
    finally:
        trainers.close.call().get(60)
    return float(sum(c for c, _ in counts) / sum(n for _, n in counts))


if __name__ == "__main__":
    from monarch.actor import this_host

    mesh = this_host().spawn_procs(per_host={"hosts": 2, "gpus": 2})
    try:
        acc = train_ddp(
            mesh,
            progress=lambda s, loss: print(f"step {s} loss {loss:.4f}") if s % 50 == 0 else None,
        )
        print(f"held-out accuracy: {acc * 100:.1f}%")
    finally:
        mesh.stop().get()
