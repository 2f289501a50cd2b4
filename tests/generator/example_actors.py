"""Implementations of the generated example actors, importable by spawned procs."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

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


class ExampleWorker(Worker):
    """A sync worker: every endpoint answers from the data it got."""

    def __init__(self) -> None:
        self.coordinator: CoordinatorMesh | None = None

    def train(self, batch: Batch) -> float:
        return float(batch.inputs.sum()) + batch.step + len(batch.labels)

    def report(self) -> Report:
        best = Tagged(label="best", value=Metric(name="loss", scalar=0.5))
        return Report(worker=os.getpid(), metrics=[Metric(name="n", count=3)], best=best)

    def progress(self, steps: int) -> Iterator[WorkerProgressResult]:
        for i in range(steps):
            yield WorkerProgressResult(step=i, phase=Phase.training)

    def set_coordinator(self, coordinator: CoordinatorMesh) -> None:
        self.coordinator = coordinator

    def echo_blob(self, blob: bytes | memoryview) -> bytes | memoryview:
        return blob


class ExampleCoordinator(Coordinator):
    """Calls back into the workers it is given (an actor reference in a message)."""

    def register(self, workers: WorkerMesh, count: int) -> bool:
        blob = workers.echo_blob.choose(b"ping").get(timeout=30)
        return bytes(blob) == b"ping" and count == 2

    def collect(self, reports: Sequence[Report]) -> CoordinatorCollectResult:
        return CoordinatorCollectResult(
            mean=sum(r.best.value.scalar for r in reports) / len(reports), total=len(reports)
        )
