"""End to end: generated actors spawned on real procs, every adverb through the capnp codec."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
import torch
from monarch.generated.example import Batch, CoordinatorMesh, Phase, WorkerMesh
from monarch.testing import proc_mesh

from tests.generator.example_actors import ExampleCoordinator, ExampleWorker


@pytest.fixture(scope="module")
def meshes() -> Iterator[tuple[WorkerMesh, CoordinatorMesh]]:
    with proc_mesh({"gpus": 2}) as procs:
        workers = procs.spawn("workers", ExampleWorker)
        coordinator = procs.slice(gpus=0).spawn("coordinator", ExampleCoordinator)
        yield workers, coordinator


def test_spawn_returns_the_generated_mesh_proxy(meshes: tuple[WorkerMesh, CoordinatorMesh]) -> None:
    workers, coordinator = meshes
    assert type(workers) is WorkerMesh and type(coordinator) is CoordinatorMesh
    assert type(workers.slice(gpus=1)) is WorkerMesh


def test_call_one_and_call_carry_structs_and_tensors(
    meshes: tuple[WorkerMesh, CoordinatorMesh],
) -> None:
    workers, _ = meshes
    batch = Batch(step=2, inputs=torch.ones(3, 4), labels=torch.zeros(5))
    assert workers.slice(gpus=0).train.call_one(batch).get(timeout=30) == 12.0 + 2 + 20
    losses = workers.train.call(batch).get(timeout=30)
    assert list(losses.values()) == [34.0, 34.0]


def test_large_tensor_round_trips_out_of_band(meshes: tuple[WorkerMesh, CoordinatorMesh]) -> None:
    workers, _ = meshes
    blob = bytes(range(256)) * 65536  # 16 MiB
    got = workers.slice(gpus=1).echo_blob.call_one(blob).get(timeout=60)
    assert bytes(got) == blob


def test_choose_returns_a_result_struct_view(meshes: tuple[WorkerMesh, CoordinatorMesh]) -> None:
    workers, _ = meshes
    report = workers.report.choose().get(timeout=30)
    assert report.phase is Phase.training and report.metrics[0].which() == "count"
    assert report.best.value.scalar == 0.5 and report.config.learning_rate == pytest.approx(0.01)


def test_broadcast_then_actor_reference_and_callback(
    meshes: tuple[WorkerMesh, CoordinatorMesh],
) -> None:
    workers, coordinator = meshes
    workers.set_coordinator.broadcast(coordinator)
    assert coordinator.register.call_one(workers, 2).get(timeout=60) is True


def test_result_struct_in_and_out(meshes: tuple[WorkerMesh, CoordinatorMesh]) -> None:
    workers, coordinator = meshes
    reports = list(workers.report.call().get(timeout=30).values())
    result = coordinator.collect.call_one(reports).get(timeout=30)
    assert (result.mean, result.total) == (0.5, 2)


def test_stream_endpoint_yields_every_item(meshes: tuple[WorkerMesh, CoordinatorMesh]) -> None:
    workers, _ = meshes

    async def collect() -> list[int]:
        return [item.step async for item in workers.progress.stream(3)]

    steps = asyncio.run(asyncio.wait_for(collect(), 60))
    assert sorted(steps) == [0, 0, 1, 1, 2, 2]


def test_wrong_argument_raises_type_error_before_sending(
    meshes: tuple[WorkerMesh, CoordinatorMesh],
) -> None:
    workers, _ = meshes
    with pytest.raises(TypeError):
        workers.train.call_one(Batch(), Batch())  # type: ignore[call-arg]
