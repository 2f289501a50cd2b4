"""A parameter server whose weights live in RDMA-registered memory.

The server actor keeps a small classifier's parameters in one flat float32 tensor and registers it
once with ``RDMABuffer``. Four worker actors pull the current weights with ``read_into`` (a
one-sided read: the server's actor loop is not involved), compute gradients on their shard of
scikit-learn's handwritten digits, and push the gradients to the server by message. The server
averages them and takes an SGD step in place, so the next ``read_into`` sees the new weights.

run: python examples/parameter_server_rdma.py [--steps 30]
"""

from __future__ import annotations

import argparse

import torch
from monarch.actor import Actor, endpoint, this_host
from monarch.rdma import RDMABuffer

N_FEATURES, N_HIDDEN, N_CLASSES = 64, 32, 10
SHAPES = [(N_HIDDEN, N_FEATURES), (N_HIDDEN,), (N_CLASSES, N_HIDDEN), (N_CLASSES,)]
N_PARAMS = sum(torch.Size(s).numel() for s in SHAPES)


def unflatten(flat: torch.Tensor) -> list[torch.Tensor]:
    """Views of the four parameter tensors inside ``flat`` (float32, shape [N_PARAMS])."""
    out, pos = [], 0
    for shape in SHAPES:
        n = torch.Size(shape).numel()
        out.append(flat[pos : pos + n].view(shape))
        pos += n
    return out


def forward(params: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    w1, b1, w2, b2 = params
    return torch.relu(x @ w1.T + b1) @ w2.T + b2


def load_digits_split() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Digits 8x8 images scaled to [0, 1]: (train x, train y, test x, test y)."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target, dtype=torch.int64)
    g = torch.Generator().manual_seed(0)
    order = torch.randperm(len(x), generator=g)
    x, y = x[order], y[order]
    cut = int(0.8 * len(x))
    return x[:cut], y[:cut], x[cut:], y[cut:]


class ParameterServer(Actor):
    def __init__(self, lr: float) -> None:
        torch.manual_seed(0)
        self.weights = torch.empty(N_PARAMS, dtype=torch.float32)
        for p in unflatten(self.weights):
            torch.nn.init.normal_(p, std=0.1)
        self.lr = lr
        self.grads: list[torch.Tensor] = []
        # Registered once; workers read it directly for the rest of training.
        self.buffer = RDMABuffer(self.weights.view(torch.uint8))

    @endpoint
    def weights_handle(self) -> RDMABuffer:
        return self.buffer

    @endpoint
    def push_gradients(self, grad: torch.Tensor) -> None:
        self.grads.append(grad)

    @endpoint
    def apply(self) -> int:
        """Average the pushed gradients and step; returns how many were averaged."""
        n = len(self.grads)
        if n:
            self.weights.sub_(self.lr * torch.stack(self.grads).mean(0))  # in place: same memory
        self.grads.clear()
        return n

    @endpoint
    def accuracy(self) -> float:
        _, _, x, y = load_digits_split()
        with torch.no_grad():
            return float((forward(unflatten(self.weights), x).argmax(1) == y).float().mean())


class Worker(Actor):
    def __init__(self, n_workers: int) -> None:
        from monarch.actor import current_rank

        rank = current_rank().rank
        x, y, _, _ = load_digits_split()
        self.x, self.y = x[rank::n_workers], y[rank::n_workers]
        self.local = torch.zeros(N_PARAMS, dtype=torch.float32)

    @endpoint
    def step(self, server: ParameterServer, handle: RDMABuffer) -> float:
        handle.read_into(self.local.view(torch.uint8)).get()  # pull: one-sided read
        params = [p.clone().requires_grad_() for p in unflatten(self.local)]
        loss = torch.nn.functional.cross_entropy(forward(params, self.x), self.y)
        loss.backward()
        grad = torch.cat([p.grad.flatten() for p in params if p.grad is not None])
        server.push_gradients.call_one(grad).get()  # push: a message
        return loss.item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--lr", type=float, default=0.5)
    args = parser.parse_args()

    server = this_host().spawn_procs(per_host={"gpus": 1}).spawn("server", ParameterServer, args.lr)
    workers = this_host().spawn_procs(per_host={"gpus": 4}).spawn("workers", Worker, 4)
    handle = server.weights_handle.call_one().get()
    print(f"weights: {handle.size} bytes registered by {handle.owner}")
    print(f"accuracy before: {server.accuracy.call_one().get():.3f}")
    for step in range(args.steps):
        losses = workers.step.call(server, handle).get()
        assert server.apply.call_one().get() == 4
        if step % 5 == 0 or step == args.steps - 1:
            mean = sum(v for _, v in losses.items()) / 4
            print(f"step {step:3d}  mean worker loss {mean:.4f}")
    acc = server.accuracy.call_one().get()
    print(f"accuracy after {args.steps} steps: {acc:.3f}")


if __name__ == "__main__":
    main()
