"""A parameter server whose weights live in RDMA-registered memory, through the stubs generated
from ``idl/parameter_server_rdma.capnp``.

The same job as ``parameter_server_rdma.py``, on the IDL path: the server keeps a small
classifier's parameters in one flat float32 tensor registered once with ``RDMABuffer``; its
``weights`` endpoint returns a ``Weights`` struct whose ``handle`` field is the schema's
``M.RDMABuffer``. Four workers get the handle as an ``M.RDMABuffer`` parameter, pull the weights
with ``read_into`` (one-sided: the server's actor loop takes no part), compute the gradient on
their shard of scikit-learn's handwritten digits and push it by message (``M.Tensor``). The
server averages the pushes and steps in place, so the next read sees the new weights.

Run: ``python examples/parameter_server_rdma_idl.py [--steps 30]``.
"""

from __future__ import annotations

import argparse
import math
import sys
from typing import TYPE_CHECKING

from monarch.actor import context, this_host
from monarch.generated.parameter_server_rdma import (
    ParameterServer,
    ParameterServerMesh,
    Weights,
    Worker,
)
from monarch.rdma import RDMABuffer

if TYPE_CHECKING:
    import torch

N_FEATURES, N_HIDDEN, N_CLASSES = 64, 32, 10
SHAPES: list[tuple[int, ...]] = [
    (N_HIDDEN, N_FEATURES),
    (N_HIDDEN,),
    (N_CLASSES, N_HIDDEN),
    (N_CLASSES,),
]
N_PARAMS = sum(math.prod(s) for s in SHAPES)
N_WORKERS = 4


def unflatten(flat: torch.Tensor) -> list[torch.Tensor]:
    """Views of the four parameter tensors inside ``flat`` (float32, shape [N_PARAMS])."""
    out, pos = [], 0
    for shape in SHAPES:
        n = math.prod(shape)
        out.append(flat[pos : pos + n].view(shape))
        pos += n
    return out


def forward(params: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Logits of the two-layer MLP: x float32 [N, 64] -> float32 [N, 10]."""
    import torch

    w1, b1, w2, b2 = params
    return torch.relu(x @ w1.T + b1) @ w2.T + b2


def load_digits_split() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Digits 8x8 images scaled to [0, 1]: (train x, train y, test x, test y)."""
    import torch
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target, dtype=torch.int64)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    x, y = x[order], y[order]
    cut = int(0.8 * len(x))
    return x[:cut], y[:cut], x[cut:], y[cut:]


class Server(ParameterServer):
    """Registers the weights once; averages pushed gradients and steps in place.

    Args:
        lr: learning rate.
    """

    def __init__(self, lr: float) -> None:
        import torch

        torch.manual_seed(0)
        self.weights_ = torch.empty(N_PARAMS, dtype=torch.float32)
        for p in unflatten(self.weights_):
            torch.nn.init.normal_(p, std=0.1)
        self.lr = lr
        self.grads: list[torch.Tensor] = []
        # Registered once: workers read this memory directly for the rest of training.
        self.buffer = RDMABuffer(self.weights_.view(torch.uint8))

    def weights(self) -> Weights:
        return Weights(handle=self.buffer, num_params=N_PARAMS)

    def push_gradients(self, grad: torch.Tensor) -> None:
        self.grads.append(grad.clone())  # the received tensor is a view of the message

    def apply(self) -> int:
        import torch

        n = len(self.grads)
        if n:
            self.weights_.sub_(self.lr * torch.stack(self.grads).mean(0))  # same memory
        self.grads.clear()
        return n

    def accuracy(self) -> float:
        import torch

        _, _, x, y = load_digits_split()
        with torch.no_grad():
            logits = forward(unflatten(self.weights_), x)
        return float((logits.argmax(1) == y).float().mean())


class ShardWorker(Worker):
    """Owns every ``N_WORKERS``-th training example, starting at its rank."""

    def __init__(self) -> None:
        import torch

        rank = context().actor_instance.rank.rank
        x, y, _, _ = load_digits_split()
        self.x, self.y = x[rank::N_WORKERS], y[rank::N_WORKERS]
        self.local = torch.zeros(N_PARAMS, dtype=torch.float32)

    def step(self, server: ParameterServerMesh, weights: RDMABuffer) -> float:
        import torch

        weights.read_into(self.local.view(torch.uint8)).get(timeout=60)  # pull: one-sided read
        params = [p.clone().requires_grad_() for p in unflatten(self.local)]
        loss = torch.nn.functional.cross_entropy(forward(params, self.x), self.y)
        torch.autograd.backward(loss)
        grad = torch.cat([p.grad.flatten() for p in params if p.grad is not None])
        server.push_gradients.call_one(grad).get(timeout=60)  # push: a message
        return float(loss.item())


def main() -> int:
    parser = argparse.ArgumentParser(description="RDMA parameter server (generated stubs).")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--lr", type=float, default=0.5)
    args = parser.parse_args()

    server_procs = this_host().spawn_procs(per_host={"gpus": 1})
    worker_procs = this_host().spawn_procs(per_host={"gpus": N_WORKERS})
    try:
        server = server_procs.spawn("server", Server, args.lr)
        workers = worker_procs.spawn("workers", ShardWorker)
        info = server.weights.call_one().get(timeout=60)
        handle = info.handle
        assert handle is not None and handle.size == 4 * info.num_params
        print(
            f"weights: {info.num_params} float32 in {handle.size} bytes registered by {handle.owner}"
        )
        before = server.accuracy.call_one().get(timeout=60)
        print(f"accuracy before: {before:.3f}")
        for step in range(args.steps):
            losses = workers.step.call(server, handle).get(timeout=120)
            averaged = server.apply.call_one().get(timeout=60)
            assert averaged == N_WORKERS, averaged
            if step % 5 == 0 or step == args.steps - 1:
                mean = sum(v for _, v in losses.items()) / N_WORKERS
                print(f"step {step:3d}  mean worker loss {mean:.4f}")
        after = server.accuracy.call_one().get(timeout=60)
    finally:
        server_procs.stop().get(30)
        worker_procs.stop().get(30)
    ok = after > max(before, 0.8)
    print(
        f"parameter server (rdma, idl): accuracy {before:.3f} -> {after:.3f} after "
        f"{args.steps} steps {'ok' if ok else 'FAILED'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
