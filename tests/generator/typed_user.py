"""A typed user program over generated/example.py: mypy --strict must accept it as is."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import torch
from monarch import stubs
from monarch.generated.example import (
    Batch,
    Coordinator,
    CoordinatorCollectResult,
    CoordinatorMesh,
    Metric,
    Phase,
    Report,
    Tagged,
    Worker,
    WorkerMesh,
    WorkerProgressResult,
)
from monarch.generated.parameter_server_rdma import ParameterServerMesh, Weights
from monarch.generated.parameter_server_rdma import WorkerMesh as RdmaWorkerMesh
from monarch.rdma import RDMABuffer


class MyWorker(Worker):
    def __init__(self) -> None:
        self.coordinator: CoordinatorMesh | None = None

    async def train(self, batch: Batch) -> float:
        return float(batch.inputs.sum()) + len(batch.tags)

    async def report(self) -> Report:
        best = Tagged(label="best", value=Metric(name="loss", scalar=0.5))
        return Report(
            worker=1, phase=Phase.evaluating, metrics=[Metric(name="n", count=3)], best=best
        )

    async def progress(self, steps: int) -> AsyncIterator[WorkerProgressResult]:
        for i in range(steps):
            yield WorkerProgressResult(step=i, phase=Phase.training)

    async def set_coordinator(self, coordinator: CoordinatorMesh) -> None:
        self.coordinator = coordinator

    async def echo_blob(self, blob: bytes | memoryview) -> bytes | memoryview:
        return blob


class MyCoordinator(Coordinator):
    def register(self, workers: WorkerMesh, count: int) -> bool:
        return count > 0

    def collect(self, reports: Sequence[Report]) -> CoordinatorCollectResult:
        return CoordinatorCollectResult(mean=0.0, total=len(reports))


def drive(workers: WorkerMesh, coordinator: CoordinatorMesh) -> float:
    batch = Batch(step=1, inputs=torch.zeros(2, 3), labels=torch.ones(2), tags=["a"])
    loss: float = workers.slice(gpus=0).train.call_one(batch).get()
    losses: stubs.ValueMesh[float] = workers.train.call(batch=batch).get()
    workers.set_coordinator.broadcast(coordinator)
    accepted: bool = coordinator.register.choose(workers, 2).get()
    report = workers.report.choose().get()
    kind: str = report.metrics[0].which()
    rate: float = report.config.learning_rate
    best: Metric = report.best.value
    blob = workers.echo_blob.call_one(bytearray(b"x")).get()
    stream: stubs.Stream[WorkerProgressResult] = workers.progress.stream(3)
    total = coordinator.collect.call_one([report]).get().total
    return (
        loss
        + sum(losses.values())
        + accepted
        + rate
        + len(kind)
        + len(blob)
        + total
        + len(best.name)
        + len([stream])
    )


def pull_with_rdma(workers: RdmaWorkerMesh, server: ParameterServerMesh, mem: bytearray) -> float:
    info: Weights = server.weights.call_one().get()
    handle: RDMABuffer | None = info.handle
    assert handle is not None
    handle.read_into(memoryview(mem)).get()
    again = Weights(handle=handle, num_params=info.num_params)
    losses: stubs.ValueMesh[float] = workers.step.call(server, handle).get()
    return sum(losses.values()) + again.num_params
