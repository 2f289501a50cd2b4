"""Misuses of generated code and of plain Python actors that mypy --strict must reject, each with
its exact error.

Every line that must fail ends with a comment "E: <message>  [code]"; test_generated_types.py checks that
mypy reports exactly these errors and no others.
"""

# fmt: off
from __future__ import annotations

from gencases.builtin_names import Phase, RunnerMesh
from gencases.generic_results import Page, ShopMesh
from gencases.inheritance import Derived
from monarch import stubs
from monarch.actor import ProcMesh
from monarch.generated.example import (
    Batch,
    Coordinator,
    CoordinatorCollectResult,
    Report,
    Worker,
    WorkerMesh,
)
from monarch.generated.parameter_server_rdma import ParameterServerMesh
from monarch.generated.parameter_server_rdma import WorkerMesh as RdmaWorkerMesh

from tests.runtime.typed_plain_actors import Counter


def wrong_argument_type(workers: WorkerMesh) -> None:
    workers.train.call_one("not a batch")  # E: Argument 1 to "call_one" of "Endpoint" has incompatible type "str"; expected "Batch"  [arg-type]


def missing_argument(workers: WorkerMesh) -> None:
    workers.train.call()  # E: Missing positional argument "batch" in call to "call" of "Endpoint"  [call-arg]


def value_mesh_as_scalar(workers: WorkerMesh) -> float:
    loss: float = workers.train.call(Batch()).get()  # E: Incompatible types in assignment (expression has type "ValueMesh[float]", variable has type "float")  [assignment]
    return loss


def wrong_port_type(port: stubs.Port[int]) -> None:
    port.send("three")  # E: Argument 1 to "send" of "Port" has incompatible type "str"; expected "int"  [arg-type]


def broadcast_has_no_result(workers: WorkerMesh) -> object:
    result = workers.train.broadcast(Batch())  # E: "broadcast" of "Endpoint" does not return a value (it only ever returns None)  [func-returns-value]
    return result


class BadCoordinator(Coordinator):
    def register(self, workers: int, count: int) -> bool:  # E: Argument 1 of "register" is incompatible with supertype "monarch.generated.example.Coordinator"; supertype defines the argument type as "WorkerMesh"  [override]
        return True

    def collect(self, reports: list[Report]) -> CoordinatorCollectResult:  # E: Argument 1 of "collect" is incompatible with supertype "monarch.generated.example.Coordinator"; supertype defines the argument type as "Sequence[Report]"  [override]
        return CoordinatorCollectResult()


class BadWorker(Worker):
    def train(self, batch: Batch) -> str:  # E: Return type "str" of "train" incompatible with return type "float | Awaitable[float]" in supertype "monarch.generated.example.Worker"  [override]
        return ""


def rdma_handle_is_not_bytes(workers: RdmaWorkerMesh, server: ParameterServerMesh) -> None:
    workers.step.call_one(server, b"handle")  # E: Argument 2 to "call_one" of "Endpoint" has incompatible type "bytes"; expected "RDMABuffer"  [arg-type]


def rdma_field_may_be_unset(server: ParameterServerMesh) -> int:
    return server.weights.call_one().get().handle.size  # E: Item "None" of "RDMABuffer | None" has no attribute "size"  [union-attr]


def generic_result_keeps_its_type_argument(shop: ShopMesh) -> Page[str]:
    return shop.listing.call_one(1).get()  # E: Incompatible return value type (got "Page[Items]", expected "Page[str]")  [return-value]


def required_parameter_after_a_default_is_keyword_only(runner: RunnerMesh) -> None:
    runner.eval_.call_one(Phase.train, 3)  # E: Too many positional arguments for "call_one" of "Endpoint"  [call-arg]


def renamed_enumerant_has_no_schema_spelling() -> None:
    print(Phase.eval)  # E: "type[Phase]" has no attribute "eval"  [attr-defined]


def unknown_endpoint_of_a_generated_mesh(workers: WorkerMesh) -> None:
    workers.nosuch.call_one()  # E: "WorkerMesh" has no attribute "nosuch"  [attr-defined]


def unknown_endpoint_of_a_plain_actor_mesh(procs: ProcMesh) -> None:
    procs.spawn("c", Counter, 0).slice(gpus=1).nosuch.call_one()  # E: "Counter" has no attribute "nosuch"  [attr-defined]


def plain_actor_wrong_argument_type(procs: ProcMesh) -> None:
    procs.spawn("c", Counter, 0).incr.broadcast("one")  # E: Argument 1 to "broadcast" of "Endpoint" has incompatible type "str"; expected "int"  [arg-type]


def plain_actor_missing_argument(procs: ProcMesh) -> None:
    procs.spawn("c", Counter, 0).slice(gpus=0).label.call_one()  # E: Missing positional argument "prefix" in call to "call_one" of "Endpoint"  [call-arg]


def plain_actor_misspelled_keyword(procs: ProcMesh) -> None:
    procs.spawn("c", Counter, 0).incr.broadcast(1, note_="x")  # E: Unexpected keyword argument "note_" for "broadcast" of "Endpoint"; did you mean "note"?  [call-arg]


def plain_actor_result_type_is_inferred(procs: ProcMesh) -> str:
    return procs.spawn("c", Counter, 0).slice(gpus=0).value.call_one().get()  # E: Incompatible return value type (got "int", expected "str")  [return-value]


def spawn_needs_an_actor_class(procs: ProcMesh) -> None:
    procs.spawn("c", int)  # E: Value of type variable "A" of "spawn" of "ProcMesh" cannot be "int"  [type-var]


class DerivedImpl(Derived):
    def ping(self) -> str:
        return "pong"

    def extra(self, n: int) -> int:
        return n


def derived_interface_spawns_as_its_own_mesh(procs: ProcMesh) -> str:
    mesh = procs.spawn("d", DerivedImpl)
    mesh.extra.call_one("x")  # E: Argument 1 to "call_one" of "Endpoint" has incompatible type "str"; expected "int"  [arg-type]
    return mesh.ping.call_one().get()  # inherited endpoint: no error
