"""Data-parallel MLP training on scikit-learn's digits, with the plain Python actor API.

The same training as ``examples/train_digits.py`` (which uses the stubs generated from
``idl/trainer.capnp``), written with ``class Trainer(Actor)`` and ``@endpoint``: four trainer
procs each hold one shard of the training set (served by a rank-matched data loader actor on
the same proc); every step the client calls ``train`` on all of them, gathers their gradients
with ``call``, averages them and broadcasts the average back; every replica applies the same
averaged gradient with its own Adam, so the replicas stay identical.

Run: ``python examples/train_digits_plain.py [--steps 300] [--keep-running]``
(``--keep-running``: after the steps, keep training until Ctrl-C, with ``digits_step.py``
hot-reloaded on every save; see that module). Exits 1 when the held-out
accuracy is below 95%.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import digits_step  # the loss, in a module that --keep-running hot-reloads (examples/ is on sys.path)
from keep_running import keep_running  # the --keep-running loop (examples/ is on sys.path)
from monarch.actor import Actor, context, endpoint, this_host

SEED = 0
HIDDEN = 128


def load_split() -> tuple[Any, Any, Any, Any]:
    """Digits as float32 tensors in [0, 1]: (x_train, y_train, x_test, y_test); fixed split."""
    import torch
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.25, random_state=SEED, stratify=y)
    f = lambda a: torch.tensor(a / 16.0, dtype=torch.float32)  # noqa: E731  # pixel values are 0..16
    i = lambda a: torch.tensor(a, dtype=torch.int64)  # noqa: E731
    return f(x_tr), i(y_tr), f(x_te), i(y_te)


class DataLoader(Actor):
    """Serves minibatches of one shard of the training set (the shard of its rank)."""

    def __init__(self, x: Any, y: Any, batch_size: int) -> None:
        import torch

        rank = context().actor_instance.rank
        world = rank.extent.nelements
        self.x, self.y = x[rank.rank :: world].clone(), y[rank.rank :: world].clone()
        self.batch_size = batch_size
        self.gen = torch.Generator().manual_seed(SEED + rank.rank)

    @endpoint
    def batch(self, step: int) -> tuple[Any, Any]:
        import torch

        idx = torch.randint(0, len(self.x), (self.batch_size,), generator=self.gen)
        return self.x[idx], self.y[idx]


class Trainer(Actor):
    """One data-parallel replica of the MLP."""

    def __init__(self, loaders: Any, x_test: Any, y_test: Any, lr: float) -> None:
        import torch

        torch.set_num_threads(1)
        torch.manual_seed(SEED)
        rank = context().actor_instance.rank
        # Actor-to-actor: the data loader on my own proc (same point in the same-shaped mesh).
        self.loader = loaders.slice(**rank)
        self.model = torch.nn.Sequential(
            torch.nn.Linear(64, HIDDEN), torch.nn.ReLU(), torch.nn.Linear(HIDDEN, 10)
        )
        self.opt = torch.optim.Adam(self.model.parameters(), lr=lr)
        world = rank.extent.nelements
        self.x_te, self.y_te = (
            x_test[rank.rank :: world].clone(),
            y_test[rank.rank :: world].clone(),
        )

    @endpoint
    def train(self, step: int) -> float:
        x, y = self.loader.batch.call_one(step).get()
        self.opt.zero_grad()
        loss = digits_step.step_loss(self.model(x), y)
        loss.backward()
        return float(loss.item())

    @endpoint
    def gradients(self) -> Any:
        import torch

        return torch.cat([p.grad.flatten() for p in self.model.parameters()])

    @endpoint
    def apply_gradients(self, flat: Any) -> None:
        off = 0
        for p in self.model.parameters():
            n = p.numel()
            p.grad = flat[off : off + n].view_as(p).clone()
            off += n
        self.opt.step()

    @endpoint
    def weights(self) -> Any:
        import torch

        return torch.cat([p.detach().flatten() for p in self.model.parameters()])

    @endpoint
    def set_weights(self, flat: Any) -> None:
        import torch

        torch.nn.utils.vector_to_parameters(flat, self.model.parameters())

    @endpoint
    def evaluate(self) -> tuple[int, int]:
        import torch

        with torch.no_grad():
            pred = self.model(self.x_te).argmax(dim=1)
        return int((pred == self.y_te).sum()), len(self.y_te)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument(
        "--keep-running",
        action="store_true",
        help="after --steps, keep training until Ctrl-C, hot-reloading digits_step.py on save",
    )
    args = ap.parse_args()

    import torch
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    t0 = time.perf_counter()
    procs = this_host().spawn_procs(per_host={"gpus": 4})
    try:
        x_train, y_train, x_test, y_test = load_split()  # once, here; actors keep their shard
        loaders = procs.spawn("loaders", DataLoader, x_train, y_train, args.batch_size)
        trainers = procs.spawn("trainers", Trainer, loaders, x_test, y_test, args.lr)
        # One starting point for every replica: rank 0's initial weights.
        trainers.set_weights.broadcast(trainers.slice(gpus=0).weights.call_one().get())

        def one_step(step: int) -> float:
            losses = trainers.train.call(step)
            grads = trainers.gradients.call()  # FIFO per sender: runs after train
            avg = torch.stack(list(grads.get().values())).mean(dim=0)
            trainers.apply_gradients.broadcast(avg)
            return float(sum(losses.get().values()) / 4)

        columns = (
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f}"),
            TimeElapsedColumn(),
        )
        with Progress(*columns) as bar:
            task = bar.add_task("train", total=args.steps, loss=float("nan"))
            for step in range(args.steps):
                bar.update(task, advance=1, loss=one_step(step))
        if args.keep_running:
            keep_running(procs, one_step, args.steps)
        correct, total = 0, 0
        for c, n in trainers.evaluate.call().get().values():
            correct, total = correct + c, total + n
    finally:
        procs.stop().get(30)
    acc = correct / total
    print(f"held-out accuracy: {acc:.2%} ({correct}/{total}) in {time.perf_counter() - t0:.1f} s")
    return 0 if acc >= 0.95 else 1


if __name__ == "__main__":
    sys.exit(main())
