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
[--hosts tcp://H0:26600,tcp://H1:26600 [--tolerate-host-loss]]`` (``--hosts``: the 4 procs spread
over those machines' host agents; see docs/multihost.md). A lost host ends the job (exit status 1,
the ``SupervisionError`` naming the host), as Monarch's default fault hook does; with
``--tolerate-host-loss`` the job keeps training on the hosts left: a fault hook records the
``MeshFailure`` s instead of exiting, and the client re-slices the proc mesh to the healthy
hosts, spawns new loaders and trainers there (the shards re-split over the smaller world),
starts them from a surviving replica's weights and resumes at the first step not finished.
(``--keep-running``: after the steps, keep training until Ctrl-C, with ``digits_step.py``
hot-reloaded on every save; see that module). Exits 1 when the
held-out accuracy is below 95%.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import digits_step  # the loss, in a module that --keep-running hot-reloads (examples/ is on sys.path)
import monarch.actor
from keep_running import keep_running  # the --keep-running loop (examples/ is on sys.path)
from monarch.actor import (
    ActorError,
    MeshFailure,
    Port,
    ProcMesh,
    SupervisionError,
    attach_to_workers,
    context,
    this_host,
)
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
        step_timeout_s: when not every trainer contributed this many seconds after a step's
            first contribution (a replica's host was lost), the waiting trainers get
            ``TimeoutError`` instead of waiting forever, as a collective's timeout does; None:
            wait forever.
    """

    def __init__(self, world: int, step_timeout_s: float | None = None) -> None:
        self.world = world
        self.step_timeout_s = step_timeout_s
        self.pending: dict[int, tuple[list[Port[torch.Tensor]], list[torch.Tensor]]] = {}
        self.timers: dict[int, threading.Timer] = {}
        self.lock = threading.Lock()  # the timers' threads give up steps too

    def all_reduce(self, port: Port[torch.Tensor], step: int, grads: torch.Tensor) -> None:
        import torch

        with self.lock:
            ports, contributions = self.pending.setdefault(step, ([], []))
            ports.append(port)
            contributions.append(grads.clone())  # the received tensor views the message buffer
            if len(ports) == 1 and self.step_timeout_s is not None:
                deadline = threading.Timer(self.step_timeout_s, self._give_up, (step,))
                deadline.daemon = True
                self.timers[step] = deadline
                deadline.start()
            if len(ports) < self.world:
                return
            del self.pending[step]
            timer = self.timers.pop(step, None)
        if timer is not None:
            timer.cancel()
        mean = torch.stack(contributions).mean(dim=0)
        for p in ports:
            p.send(mean)

    def _give_up(self, step: int) -> None:
        with self.lock:
            self.timers.pop(step, None)
            ports, _ = self.pending.pop(step, ([], []))
        for p in ports:
            p.exception(
                TimeoutError(
                    f"step {step}: {len(ports)} of {self.world} trainers contributed within "
                    f"{self.step_timeout_s} s (a replica was lost?)"
                )
            )


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


def train_by_client(
    trainers: TrainerMesh, steps: int, report: Callable[[float], None], world: int = WORLD
) -> None:
    """Average the gradients on the client: ``call`` + reduce, then ``broadcast`` the mean."""
    import torch

    for step in range(steps):
        losses = trainers.train.call(step)
        grads = trainers.gradients.call()  # per-sender FIFO: runs after this step's train
        mean = torch.stack(list(grads.get().values())).mean(dim=0)
        trainers.apply_gradients.broadcast(mean)
        report(sum(losses.get().values()) / world)


def train_by_actors(
    trainers: TrainerMesh,
    reducer: GradientReducerMesh,
    steps: int,
    report: Callable[[float], None],
    world: int = WORLD,
    drain: bool = False,
) -> None:
    """Let the trainers average among themselves; follow their ``$stream`` of progress.

    Args:
        drain: on a failure, read the other trainers' parts to their end before raising (they
            end once the reducer's step timeout fails their step); False: raise at once.

    Raises:
        SupervisionError, ActorError: a trainer failed or was lost.
    """
    losses: dict[int, list[float]] = {}
    failed: BaseException | None = None
    for fut in trainers.fit.stream(steps, reducer):
        try:
            progress = fut.get()
        except (SupervisionError, ActorError) as exc:
            if not drain:
                raise
            failed = failed or exc  # the first failure; the others are read to their end
            continue
        seen = losses.setdefault(progress.step, [])
        seen.append(progress.loss)
        if len(seen) == world:
            report(sum(losses.pop(progress.step)) / world)
    if failed is not None:
        raise failed


class Replicas:
    """The job's actors over one flat proc mesh ``{"gpus": n}``: a loader and a trainer per
    proc (each keeping the shard of its rank of ``n``) and, for ``--mode actors``, a reducer on
    the first proc.

    Args:
        procs: where to spawn them.
        data: ``load_split()``'s tensors.
        args: the command line (``batch_size``, ``lr``, ``mode``).
        weights: the trainers' starting weights; None: rank 0's initial ones.
        step_timeout_s: the reducer's per-step bound (see :class:`MeanReducer`).
    """

    def __init__(
        self,
        procs: ProcMesh,
        data: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
        args: argparse.Namespace,
        weights: torch.Tensor | None = None,
        step_timeout_s: float | None = None,
    ) -> None:
        x_train, y_train, x_test, y_test = data
        self.procs = procs
        self.step_timeout_s = step_timeout_s
        self.world = len(procs)
        self.loaders = procs.spawn("loaders", DigitsLoader, x_train, y_train, args.batch_size)
        self.trainers = procs.spawn("trainers", DigitsTrainer, x_test, y_test, args.lr)
        self.trainers.connect.broadcast(self.loaders)
        # One starting point for every replica: rank 0's initial weights (or a survivor's).
        if weights is None:
            weights = self.trainers.slice(gpus=0).weights.call_one().get()
        self.trainers.set_weights.broadcast(weights)
        self.reducer: GradientReducerMesh | None = None
        if args.mode == "actors":
            self.reducer = procs.slice(gpus=0).spawn(
                "reducer", MeanReducer, self.world, step_timeout_s
            )

    def train(self, mode: str, steps: int, report: Callable[[float], None]) -> None:
        """Run ``steps`` steps (see :func:`train_by_client`, :func:`train_by_actors`)."""
        if mode == "client":
            train_by_client(self.trainers, steps, report, self.world)
        else:
            assert self.reducer is not None
            drain = self.step_timeout_s is not None
            train_by_actors(self.trainers, self.reducer, steps, report, self.world, drain)

    def survivors(self, timeout_s: float = 60.0) -> tuple[list[int], torch.Tensor | None]:
        """The ranks whose trainer still answers, and the weights of the first of them."""
        alive: list[int] = []
        weights = None
        for rank in range(self.world):
            try:
                w = self.trainers.slice(gpus=rank).weights.call_one().get(timeout_s)
            except (SupervisionError, ActorError):
                continue
            alive.append(rank)
            weights = w if weights is None else weights
        return alive, weights


FAULTS: list[MeshFailure] = []  # what record_faults() kept


def record_faults() -> None:
    """Install a fault hook that keeps every unhandled ``MeshFailure`` in :data:`FAULTS`
    instead of ending the client (Monarch's default hook prints it and exits with status 1).
    The hook runs on the client's runtime thread."""
    monarch.actor.unhandled_fault_hook = FAULTS.append


def _widest_slice(alive: list[int]) -> slice:
    """The ``slice(start, stop, step)`` over ``0..n-1`` naming the most of the indices in
    ``alive`` and no other (a mesh slice takes a range, not a set)."""
    best = slice(alive[0], alive[0] + 1)
    members = set(alive)
    for i, start in enumerate(alive):
        for nxt in alive[i + 1 :]:
            step = nxt - start
            stop = start
            while stop in members:
                stop += step
            if (stop - start) // step > len(range(best.start, best.stop, best.step or 1)):
                best = slice(start, stop, step)
    return best


def train_tolerating_host_loss(
    procs: ProcMesh,
    replicas: Replicas,
    data: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    args: argparse.Namespace,
    report: Callable[[float], None],
    restart_at: Callable[[int], None],
) -> Replicas:
    """Train ``args.steps`` steps with ``replicas``, spawned over all of ``procs`` (extent
    ``{"hosts": H, "gpus": G}``, flattened); when a host is lost, go on over the healthy hosts
    (Monarch's pattern: a fault hook that does not exit, see :func:`record_faults`, then
    re-slicing the mesh).

    Args:
        report: called with the mean loss of every step finished.
        restart_at: called with the number of steps finished when training restarts.

    Returns:
        The replicas that finished the training (their trainers evaluate the held-out set).

    Raises:
        SupervisionError, ActorError: no host is left, or a fault that is not a lost host
            (every replica still answers) repeats.
    """
    per_host = procs.size("gpus")
    hosts = list(range(procs.size("hosts")))  # the hosts the replicas run on, as procs' indices
    done = 0

    def counted(loss: float) -> None:
        nonlocal done
        done += 1
        report(loss)

    retried_at = -1  # steps finished when every replica answered after a fault (retried once)
    while done < args.steps:
        try:
            replicas.train(args.mode, args.steps - done, counted)
        except (SupervisionError, ActorError) as exc:
            alive, weights = replicas.survivors()
            healthy = [
                h
                for i, h in enumerate(hosts)
                if all(i * per_host + g in alive for g in range(per_host))
            ]
            if weights is None or not healthy or (healthy == hosts and retried_at == done):
                raise
            if healthy == hosts:
                retried_at = done
            gone = sorted({f.host for f in FAULTS if f.host}) or ["?"]
            keep = _widest_slice(healthy)
            hosts = list(range(procs.size("hosts")))[keep]
            print(
                f"lost {len(replicas.trainers) - len(alive)} of {replicas.world} replicas "
                f"(host {', '.join(gone)}: {str(exc).splitlines()[0][:160]}); training on "
                f"{len(hosts)} host(s), {len(hosts) * per_host} procs, from step {done}",
                file=sys.stderr,
                flush=True,
            )
            replicas = Replicas(
                procs.slice(hosts=keep).flatten("gpus"), data, args, weights, args.step_timeout
            )
            restart_at(done)
    return replicas


def spawn_world(hosts: str | None, *, flat: bool = True) -> ProcMesh:
    """The ``WORLD`` procs, extent ``{"gpus": WORLD}``: on this host, or (``--hosts A,B``) spread
    evenly over those host agents (``monarch host serve`` on each machine) and flattened
    (``flat=False``: left as ``{"hosts": H, "gpus": WORLD // H}``)."""
    if not hosts:
        return this_host().spawn_procs(per_host={"gpus": WORLD})
    workers = hosts.split(",")
    if WORLD % len(workers):
        raise SystemExit(f"--hosts: {WORLD} procs do not split evenly over {len(workers)} hosts")
    host_mesh = attach_to_workers(workers=workers, ca=None)
    host_mesh.initialized.get(60)
    procs = host_mesh.spawn_procs(per_host={"gpus": WORLD // len(workers)})
    return procs.flatten("gpus") if flat else procs


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
    parser.add_argument(
        "--tolerate-host-loss",
        action="store_true",
        help="with --hosts: when a host is lost, keep training on the hosts left (new replicas "
        "there start from a survivor's weights) instead of ending the job",
    )
    parser.add_argument(
        "--step-timeout",
        type=float,
        default=5.0,
        help="with --tolerate-host-loss and --mode actors: seconds the reducer waits for a "
        "step's missing contributions before failing it (default 5)",
    )
    parser.add_argument(
        "--print-every",
        type=int,
        default=0,
        metavar="N",
        help="also print a line with the loss every N steps (for logs; default: the bar only)",
    )
    args = parser.parse_args()
    if args.hosts and args.mode == "ddp":
        parser.error("--hosts works with --mode client or actors")
    if args.tolerate_host_loss and (not args.hosts or args.keep_running):
        parser.error("--tolerate-host-loss works with --hosts, without --keep-running")
    if args.mode == "ddp":
        if args.keep_running:
            parser.error("--keep-running works with --mode client or actors")
        return train_ddp_mode(args.steps, args.lr, args.batch_size)

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    start = time.perf_counter()
    procs = spawn_world(args.hosts, flat=not args.tolerate_host_loss)
    try:
        # Read the data set once, here; every actor keeps only its rank's shard of it.
        data = load_split()
        if args.tolerate_host_loss:
            record_faults()  # recorded, not fatal: the training re-plans instead
            replicas = Replicas(procs.flatten("gpus"), data, args, step_timeout_s=args.step_timeout)
        else:
            replicas = Replicas(procs, data, args)
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

            finished = [0]

            def report(loss: float) -> None:
                bar.update(task, advance=1, loss=loss)
                finished[0] += 1
                if args.print_every and finished[0] % args.print_every == 0:
                    bar.console.print(f"step {finished[0]}/{args.steps} loss {loss:.4f}")

            def restart_at(step: int) -> None:
                bar.update(task, completed=step)
                finished[0] = step

            if args.tolerate_host_loss:
                replicas = train_tolerating_host_loss(
                    procs, replicas, data, args, report, restart_at
                )
            else:
                replicas.train(args.mode, args.steps, report)
        if args.keep_running:
            losses: list[float] = []
            keep = replicas

            def one_step(step: int) -> float:
                keep.train(args.mode, 1, losses.append)
                return losses.pop()

            keep_running(procs, one_step, args.steps)
        trained = time.perf_counter()
        correct = total = 0
        for result in replicas.trainers.evaluate.call().get().values():
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
