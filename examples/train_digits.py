"""Data-parallel MLP training on scikit-learn's digits, through the stubs generated from
``idl/trainer.capnp`` (``monarch-gen idl/trainer.capnp`` writes ``generated/trainer.py``).

Four procs (``this_host().spawn_procs(per_host={"gpus": 4})``) each run a ``DataLoader`` that
holds one shard of the training set and a ``Trainer`` replica of a small MLP that draws its
minibatches from the loader of its own rank (actor to actor). Every replica starts from rank 0's
weights and applies the same averaged gradient with its own Adam, so the replicas stay equal.
Two ways to average the gradients:

- ``--mode client`` (default): per step the client calls ``train`` and ``gradients`` on every
  trainer (``call``), averages the gradients and broadcasts the mean (``apply_gradients``).
- ``--mode actors``: the client starts the ``$stream`` endpoint ``fit`` on every trainer; the
  trainers average their gradients among themselves through a ``GradientReducer`` actor (an
  explicit-response-port endpoint that answers every trainer once all have contributed) and
  stream their progress back.

The client shows a progress bar with the loss per step and prints the held-out accuracy.

Run: ``python examples/train_digits.py [--mode client|actors] [--steps 300] [--keep-running]
[--hosts tcp://H0:26600,tcp://H1:26600]`` (``--hosts``: the 4 procs spread over those machines'
host agents; see docs/multihost.md)
(``--keep-running``: after the steps, keep training until Ctrl-C, with ``digits_step.py``
hot-reloaded on every save; see that module). Exits 1 when the
held-out accuracy is below 95%.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import digits_step  # the loss, in a module that --keep-running hot-reloads (examples/ is on sys.path)
from keep_running import keep_running  # the --keep-running loop (examples/ is on sys.path)
from monarch.actor import Port, ProcMesh, attach_to_workers, context, this_host
from monarch.generated.trainer import (
    Batch,
    DataLoader,
    DataLoaderMesh,
    GradientReducer,
    GradientReducerMesh,
    Progress,
    Trainer,
    TrainerEvaluateResult,
    TrainerMesh,
)

if TYPE_CHECKING:
    import torch

SEED = 0
HIDDEN = 128
FEATURES = 64
CLASSES = 10
WORLD = 4
TARGET_ACCURACY = 0.95


def load_split() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The digits data set split 75/25 with a fixed seed, as tensors.

    Returns:
        ``(x_train, y_train, x_test, y_test)``: inputs float32 [n, 64] in [0, 1] (pixels are
        0..16), labels int64 [n].
    """
    import torch
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.25, random_state=SEED, stratify=y)
    return (
        torch.tensor(x_tr / 16.0, dtype=torch.float32),
        torch.tensor(y_tr, dtype=torch.int64),
        torch.tensor(x_te / 16.0, dtype=torch.float32),
        torch.tensor(y_te, dtype=torch.int64),
    )


def my_shard() -> tuple[int, int]:
    """``(rank, world size)`` of the calling actor in the mesh it was spawned as."""
    point = context().actor_instance.rank
    return point.rank, point.extent.nelements


class DigitsLoader(DataLoader):
    """Serves minibatches of the training shard of its rank.

    Args:
        x: the whole training set's inputs, float32 [n, 64]; this loader keeps its shard.
        y: the whole training set's labels, int64 [n].
        batch_size: examples per minibatch.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> None:
        import torch

        rank, world = my_shard()
        self.x, self.y = x[rank::world].clone(), y[rank::world].clone()
        self.batch_size = batch_size
        self.gen = torch.Generator().manual_seed(SEED + rank)

    def batch(self, step: int) -> Batch:
        import torch

        idx = torch.randint(0, len(self.x), (self.batch_size,), generator=self.gen)
        return Batch(step=step, inputs=self.x[idx], labels=self.y[idx])

    def shard_size(self) -> int:
        return len(self.x)


class MeanReducer(GradientReducer):
    """Averages the gradients of ``world`` trainers per step; answers each once all arrived.

    Args:
        world: the number of trainers contributing to every step.
    """

    def __init__(self, world: int) -> None:
        self.world = world
        self.pending: dict[int, tuple[list[Port[torch.Tensor]], list[torch.Tensor]]] = {}

    def all_reduce(self, port: Port[torch.Tensor], step: int, grads: torch.Tensor) -> None:
        import torch

        ports, contributions = self.pending.setdefault(step, ([], []))
        ports.append(port)
        contributions.append(grads.clone())  # the received tensor views the message buffer
        if len(ports) == self.world:
            del self.pending[step]
            mean = torch.stack(contributions).mean(dim=0)
            for p in ports:
                p.send(mean)


class DigitsTrainer(Trainer):
    """One replica of a 64-128-10 MLP with Adam.

    Args:
        x_test: the whole held-out set's inputs, float32 [n, 64]; this trainer keeps its shard.
        y_test: the whole held-out set's labels, int64 [n].
        lr: Adam's learning rate.
    """

    def __init__(self, x_test: torch.Tensor, y_test: torch.Tensor, lr: float) -> None:
        import torch

        torch.set_num_threads(1)  # four replicas share the machine's cores
        torch.manual_seed(SEED)
        self.model = torch.nn.Sequential(
            torch.nn.Linear(FEATURES, HIDDEN), torch.nn.ReLU(), torch.nn.Linear(HIDDEN, CLASSES)
        )
        self.opt = torch.optim.Adam(self.model.parameters(), lr=lr)
        rank, world = my_shard()
        self.x_te, self.y_te = x_test[rank::world].clone(), y_test[rank::world].clone()
        self.loader: DataLoaderMesh | None = None
        self.step = 0

    def connect(self, loaders: DataLoaderMesh) -> None:
        self.loader = loaders.slice(**context().actor_instance.rank)

    def train(self, step: int) -> float:
        import torch

        if self.loader is None:
            raise RuntimeError("call connect() before train()")
        batch = self.loader.batch.call_one(step).get()
        self.opt.zero_grad()
        loss = digits_step.step_loss(self.model(batch.inputs), batch.labels)
        torch.autograd.backward(loss)
        return float(loss.item())

    def gradients(self) -> torch.Tensor:
        import torch

        return torch.cat([_grad(p).flatten() for p in self.model.parameters()])

    def apply_gradients(self, grads: torch.Tensor) -> None:
        offset = 0
        for p in self.model.parameters():
            n = p.numel()
            p.grad = grads[offset : offset + n].view_as(p).clone()
            offset += n
        self.opt.step()

    def weights(self) -> torch.Tensor:
        import torch

        return torch.nn.utils.parameters_to_vector(self.model.parameters()).detach()

    def set_weights(self, weights: torch.Tensor) -> None:
        import torch

        torch.nn.utils.vector_to_parameters(weights.clone(), self.model.parameters())

    def evaluate(self) -> TrainerEvaluateResult:
        import torch

        with torch.no_grad():
            predicted = self.model(self.x_te).argmax(dim=1)
        return TrainerEvaluateResult(
            correct=int((predicted == self.y_te).sum()), total=len(self.y_te)
        )

    def fit(self, steps: int, reducer: GradientReducerMesh) -> Iterator[Progress]:
        for _ in range(steps):
            step = self.step
            loss = self.train(step)
            self.apply_gradients(reducer.all_reduce.call_one(step, self.gradients()).get())
            self.step += 1
            yield Progress(step=step, loss=loss)


def _grad(p: torch.nn.Parameter) -> torch.Tensor:
    if p.grad is None:
        raise RuntimeError("no gradient: call train() first")
    return p.grad


def train_by_client(trainers: TrainerMesh, steps: int, report: Callable[[float], None]) -> None:
    """Average the gradients on the client: ``call`` + reduce, then ``broadcast`` the mean."""
    import torch

    for step in range(steps):
        losses = trainers.train.call(step)
        grads = trainers.gradients.call()  # per-sender FIFO: runs after this step's train
        mean = torch.stack(list(grads.get().values())).mean(dim=0)
        trainers.apply_gradients.broadcast(mean)
        report(sum(losses.get().values()) / WORLD)


def train_by_actors(
    trainers: TrainerMesh, reducer: GradientReducerMesh, steps: int, report: Callable[[float], None]
) -> None:
    """Let the trainers average among themselves; follow their ``$stream`` of progress."""
    losses: dict[int, list[float]] = {}
    for fut in trainers.fit.stream(steps, reducer):
        progress = fut.get()
        seen = losses.setdefault(progress.step, [])
        seen.append(progress.loss)
        if len(seen) == WORLD:
            report(sum(losses.pop(progress.step)) / WORLD)


def spawn_world(hosts: str | None) -> ProcMesh:
    """The ``WORLD`` procs, extent ``{"gpus": WORLD}``: on this host, or (``--hosts A,B``) spread
    evenly over those host agents (``monarch host serve`` on each machine) and flattened."""
    if not hosts:
        return this_host().spawn_procs(per_host={"gpus": WORLD})
    workers = hosts.split(",")
    if WORLD % len(workers):
        raise SystemExit(f"--hosts: {WORLD} procs do not split evenly over {len(workers)} hosts")
    host_mesh = attach_to_workers(workers=workers, ca=None)
    host_mesh.initialized.get(60)
    return host_mesh.spawn_procs(per_host={"gpus": WORLD // len(workers)}).flatten("gpus")


def train_ddp_mode(steps: int, lr: float, batch_size: int) -> int:
    """``--mode ddp``: DDP inside the mesh (examples/digits_ddp.py); prints the held-out accuracy."""
    from digits_ddp import train_ddp  # examples/ is on sys.path
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    start = time.perf_counter()
    procs = this_host().spawn_procs(per_host={"gpus": WORLD})
    try:
        with Progress(
            TextColumn("[bold]train (ddp)"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f}"), TimeElapsedColumn(),
        ) as bar:  # fmt: skip
            task = bar.add_task("train", total=steps, loss=float("nan"))

            def progress(step: int, loss: float) -> None:
                bar.update(task, completed=step + 1, loss=loss)

            accuracy = train_ddp(procs, steps=steps, lr=lr, batch_size=batch_size, progress=progress)
    finally:
        procs.stop().get(30)
    print(f"held-out accuracy: {accuracy:.2%}; total {time.perf_counter() - start:.1f} s")
    if accuracy < TARGET_ACCURACY:
        print(f"FAILED: accuracy below {TARGET_ACCURACY:.0%}", file=sys.stderr)
        return 1
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description="Data-parallel MLP on digits (generated stubs).")
    parser.add_argument(
        "--mode",
        choices=["client", "actors", "ddp"],
        default="client",
        help="client: the client averages gradients; actors: a reducer actor does; ddp: the "
        "trainers all-reduce among themselves with torch.distributed DDP (gloo), the client only "
        "drives steps",
    )
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument(
        "--keep-running",
        action="store_true",
        help="after --steps, keep training until Ctrl-C, hot-reloading digits_step.py on save",
    )
    parser.add_argument(
        "--hosts",
        help="comma-separated host agents (tcp://HOST:PORT, each running `monarch host serve`): "
        f"the {WORLD} procs are spread over them (--mode client or actors); default: this host",
    )
    args = parser.parse_args()
    if args.hosts and args.mode == "ddp":
        parser.error("--hosts works with --mode client or actors")
    if args.mode == "ddp":
        if args.keep_running:
            parser.error("--keep-running works with --mode client or actors")
        return train_ddp_mode(args.steps, args.lr, args.batch_size)

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    start = time.perf_counter()
    procs = spawn_world(args.hosts)
    try:
        # Read the data set once, here; every actor keeps only its rank's shard of it.
        x_train, y_train, x_test, y_test = load_split()
        loaders = procs.spawn("loaders", DigitsLoader, x_train, y_train, args.batch_size)
        trainers = procs.spawn("trainers", DigitsTrainer, x_test, y_test, args.lr)
        trainers.connect.broadcast(loaders)
        # One starting point for every replica: rank 0's initial weights.
        trainers.set_weights.broadcast(trainers.slice(gpus=0).weights.call_one().get())
        ready = time.perf_counter()
        columns = (
            TextColumn(f"[bold]train ({args.mode})"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f}"),
            TimeElapsedColumn(),
        )
        with Progress(*columns) as bar:
            task = bar.add_task("train", total=args.steps, loss=float("nan"))

            def report(loss: float) -> None:
                bar.update(task, advance=1, loss=loss)

            if args.mode == "client":
                train_by_client(trainers, args.steps, report)
            else:
                reducer = procs.slice(gpus=0).spawn("reducer", MeanReducer, WORLD)
                train_by_actors(trainers, reducer, args.steps, report)
        if args.keep_running:
            losses: list[float] = []

            def one_step(step: int) -> float:
                if args.mode == "client":
                    train_by_client(trainers, 1, losses.append)
                else:
                    train_by_actors(trainers, reducer, 1, losses.append)
                return losses.pop()

            keep_running(procs, one_step, args.steps)
        trained = time.perf_counter()
        correct = total = 0
        for result in trainers.evaluate.call().get().values():
            correct, total = correct + result.correct, total + result.total
    finally:
        procs.stop().get(30)
    accuracy = correct / total
    print(
        f"held-out accuracy: {accuracy:.2%} ({correct}/{total}); "
        f"start-up {ready - start:.1f} s, training {trained - ready:.1f} s, total {time.perf_counter() - start:.1f} s"
    )
    if accuracy < TARGET_ACCURACY:
        print(f"FAILED: accuracy below {TARGET_ACCURACY:.0%}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
