"""Misuses of generated ``$M.rref`` endpoints that mypy --strict must reject, each with its exact
error in an "E:" comment at the end of its line (test_rref_idl.py checks them)."""

# fmt: off
from __future__ import annotations

from gencases.tensor_rref import SharderMesh


def rref_of_an_endpoint_not_marked_rref(sharders: SharderMesh) -> None:
    sharders.count.rref()  # E: "None" not callable  [misc]


def wrong_argument_type(sharders: SharderMesh) -> None:
    sharders.shard.rref("four", 2.0)  # E: Argument 1 to "rref" of "RRefEndpoint" has incompatible type "str"; expected "int"  [arg-type]


def missing_argument(sharders: SharderMesh) -> None:
    sharders.shard.rref(4)  # E: Missing positional argument "scale" in call to "rref" of "RRefEndpoint"  [call-arg]


def handle_as_a_number(sharders: SharderMesh) -> int:
    n: int = sharders.ones.rref(3)  # E: Incompatible types in assignment (expression has type "TensorHandle", variable has type "int")  [assignment]
    return n


def reduce_over_a_number(sharders: SharderMesh) -> None:
    sharders.ones.rref(3).reduce(0)  # E: Argument 1 to "reduce" of "TensorHandle" has incompatible type "int"; expected "str | tuple[str, ...] | list[str]"  [arg-type]
