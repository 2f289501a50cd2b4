"""A parameter server with workers, through the stubs generated from
``idl/parameter_server.capnp``.

One server proc holds the weights of a linear model; four worker procs each hold a shard of a
synthetic regression data set (y = X w* + noise). Every worker, independently and concurrently,
pulls the current weights, computes the gradient of the mean squared error on its shard and
pushes it; the server applies each push as it arrives (asynchronous SGD). The client only hands
the server's reference to the workers and checks how close the final weights are to w*.

Run: ``python examples/parameter_server.py [--steps 60]``.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from monarch.actor import context, this_host
from monarch.generated.parameter_server import (
    ParameterServer,
    ParameterServerMesh,
    Versioned,
    Worker,
)

if TYPE_CHECKING:
    import torch

FEATURES = 8
SEED = 0


def true_weights() -> torch.Tensor:
    """The weights w* the workers' data is drawn from: float32 [FEATURES]."""
    import torch

    return torch.linspace(-1.0, 1.0, FEATURES)


class Server(ParameterServer):
    """Applies pushed gradients with plain SGD.

    Args:
        lr: learning rate.
    """

    def __init__(self, lr: float) -> None:
        import torch

        self.weights = torch.zeros(FEATURES)
        self.version = 0
        self.lr = lr

    def pull(self) -> Versioned:
        return Versioned(version=self.version, weights=self.weights)

    def push(self, grads: torch.Tensor, worker: int) -> int:
        self.weights = self.weights - self.lr * grads
        self.version += 1
        return self.version


class ShardWorker(Worker):
    """Owns 256 examples of the regression data set, drawn with a per-rank seed."""

    def __init__(self) -> None:
        import torch

        self.rank = context().actor_instance.rank.rank
        gen = torch.Generator().manual_seed(SEED + self.rank)
        self.x = torch.randn(256, FEATURES, generator=gen)
        self.y = self.x @ true_weights() + 0.01 * torch.randn(256, generator=gen)

    def _loss_and_grad(self, w: torch.Tensor) -> tuple[float, torch.Tensor]:
        err = self.x @ w - self.y
        return float((err * err).mean()), 2.0 * self.x.T @ err / len(err)

    def work(self, server: ParameterServerMesh, steps: int) -> float:
        for _ in range(steps):
            current = server.pull.call_one().get()
            _, grad = self._loss_and_grad(current.weights)
            server.push.call_one(grad, self.rank).get()
        loss, _ = self._loss_and_grad(server.pull.call_one().get().weights)
        return loss


def main() -> int:
    parser = argparse.ArgumentParser(description="Parameter server and workers (generated stubs).")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--lr", type=float, default=0.05)
    args = parser.parse_args()

    import torch

    server_procs = this_host().spawn_procs(per_host={"gpus": 1})
    worker_procs = this_host().spawn_procs(per_host={"gpus": 4})
    try:
        server = server_procs.spawn("server", Server, args.lr)
        workers = worker_procs.spawn("workers", ShardWorker)
        losses = workers.work.call(server, args.steps).get(timeout=120)
        final = server.pull.call_one().get()
    finally:
        server_procs.stop().get(30)
        worker_procs.stop().get(30)
    error = float(torch.linalg.vector_norm(final.weights - true_weights()))
    for point, loss in losses.items():
        print(f"worker {dict(point)}: shard loss {loss:.5f}")
    ok = final.version == 4 * args.steps and error < 0.05
    print(
        f"parameter server: version {final.version}, |w - w*| = {error:.4f} {'ok' if ok else 'FAILED'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
