"""Wrong calls of generated endpoints fail at the call site, naming endpoint and field
(issue 11 §2): no raw ``KjException ... Value type mismatch``, and a misspelled keyword is
reported as such, not as a missing argument."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from monarch._core.shape import Shape
from monarch._idl._types import FieldValueError
from monarch._mesh.actor_mesh import MeshRef
from monarch.generated.example import (
    _COORDINATOR_REGISTER,
    _WORKER_TRAIN,
    Batch,
    CoordinatorMesh,
    WorkerMesh,
)
from monarch.testing import proc_mesh

from tests.generator.example_actors import ExampleCoordinator, ExampleWorker

_REF = MeshRef("m", "m", ("unused",), Shape(["gpus"], 0, [1]), None, "unused")


def _encode(spec: Any, *args: Any, **kwargs: Any) -> None:
    """What ``ActorMesh._invoke`` does with the arguments before it sends anything."""
    spec.check_arguments(args, kwargs)
    spec.codec.encode_call(args, kwargs)


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        ((), {"count": "two"}, "Coordinator.register: field 'count' expects UInt32, got str"),
        ((-1,), {}, "Coordinator.register: field 'count' expects UInt32, got int -1 (out of range)"),
        ((1.5,), {}, "Coordinator.register: field 'count' expects UInt32, got float 1.5 (not an integer)"),
    ],
)  # fmt: skip
def test_wrong_scalar_value_names_endpoint_and_field(args: Any, kwargs: Any, message: str) -> None:
    workers = WorkerMesh(_REF)
    with pytest.raises(FieldValueError) as info:
        _encode(_COORDINATOR_REGISTER, workers, *args, **kwargs)
    assert str(info.value) == message
    assert isinstance(info.value, TypeError) and isinstance(info.value, ValueError)
    # pycapnp's exception (with its C++ stack) is neither the cause nor shown as context
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_wrong_value_inside_a_struct_argument_names_the_dotted_field() -> None:
    with pytest.raises(
        TypeError, match=r"^Worker\.train: field 'batch\.step' expects UInt64, got str$"
    ):
        _encode(_WORKER_TRAIN, Batch(step="one"))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^Worker\.train: field 'batch' expects Batch, got str$"):
        _encode(_WORKER_TRAIN, "batch")


def test_mesh_of_another_actor_type_is_refused_for_an_actor_reference() -> None:
    with pytest.raises(
        TypeError,
        match=r"^Coordinator\.register: field 'workers' expects WorkerMesh, got CoordinatorMesh$",
    ):
        _encode(_COORDINATOR_REGISTER, CoordinatorMesh(_REF), 2)


def test_misspelled_keyword_is_reported_with_a_suggestion_not_as_missing() -> None:
    with pytest.raises(TypeError) as info:
        _encode(_COORDINATOR_REGISTER, WorkerMesh(_REF), cuont=2)
    assert str(info.value) == (
        "Coordinator.register() got an unexpected keyword argument 'cuont' (did you mean 'count'?)"
    )


@pytest.fixture(scope="module")
def meshes() -> Iterator[tuple[WorkerMesh, CoordinatorMesh]]:
    with proc_mesh({"gpus": 2}) as procs:
        workers = procs.spawn("workers", ExampleWorker)
        coordinator = procs.slice(gpus=0).spawn("coordinator", ExampleCoordinator)
        yield workers, coordinator


def test_wrong_calls_on_real_procs_raise_at_the_call_site_and_the_actor_keeps_serving(
    meshes: tuple[WorkerMesh, CoordinatorMesh],
) -> None:
    workers, coordinator = meshes
    with pytest.raises(
        TypeError, match=r"^Coordinator\.register: field 'count' expects UInt32, got str$"
    ):
        coordinator.register.call_one(workers, "2")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"did you mean 'count'\?"):
        coordinator.register.call_one(workers, cuont=2)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="expects WorkerMesh, got CoordinatorMesh"):
        coordinator.register.call_one(coordinator, 2)  # type: ignore[arg-type]
    assert coordinator.register.call_one(workers, 2).get(timeout=30) is True
