"""The typed ``rref()`` adverb of ``$M.rref`` endpoints (generated code: ``stubs.remote_rref``).

A ``$M.rref`` method returns one tensor (``M.Tensor``); on its mesh proxy
the endpoint attribute is an :class:`RRefEndpoint`, whose ``rref(...)`` returns a
:class:`TensorHandle` (at run time a ``monarch.Tensor``: the result stays on every rank, see
docs/tensors.md). Other IDL endpoints keep the plain ``Endpoint`` adverbs.

The classes here are static types only: at run time ``remote_rref`` makes the same
``EndpointProperty`` as ``remote``, and ``Endpoint.rref`` hands the call to the tensor engine
(``monarch.tensor._rref``, which loads torch). This module imports neither torch nor the tensor
engine (layer 3): ``TensorHandle`` exists for type checkers alone.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar, overload

from .._mesh.endpoint import Endpoint, EndpointProperty, EndpointSpec

__all__ = [
    "IdlEndpoint",
    "IdlEndpointProperty",
    "RRefEndpoint",
    "RRefEndpointProperty",
    "TensorHandle",
    "remote_rref",
]

P = ParamSpec("P")
R = TypeVar("R")

if TYPE_CHECKING:
    import torch

    class TensorHandle(torch.Tensor):
        """The static type of a distributed tensor handle (``monarch.Tensor`` is one): a
        ``torch.Tensor`` whose shape and dtype are known on the client and whose values live
        on every rank of a ProcMesh."""

        def reduce(
            self,
            dims: str | tuple[str, ...] | list[str],
            reduction: str = "sum",
            scatter: bool = False,
            mesh: Any = None,
        ) -> TensorHandle: ...

        def reduce_(
            self,
            dims: str | tuple[str, ...] | list[str],
            reduction: str = "sum",
            scatter: bool = False,
            mesh: Any = None,
        ) -> TensorHandle: ...

    class IdlEndpoint(Endpoint[P, R]):
        """An endpoint of a method not marked ``$M.rref``: the adverbs of ``Endpoint`` without
        ``rref`` (calling it is a type error; at run time it raises ``TypeError``)."""

        rref: None  # type: ignore[assignment]  # only $M.rref endpoints offer rref()

    class IdlEndpointProperty(EndpointProperty[P, R]):
        """The mesh-proxy attribute of a method not marked ``$M.rref``."""

        @overload
        def __get__(self, instance: None, owner: type) -> IdlEndpointProperty[P, R]: ...
        @overload
        def __get__(self, instance: object, owner: type) -> IdlEndpoint[P, R]: ...
        def __get__(self, instance: object, owner: type) -> Any: ...

    class RRefEndpoint(Endpoint[P, torch.Tensor]):
        """An endpoint of a ``$M.rref`` method: the adverbs of ``Endpoint``, and ``rref``."""

        def rref(self, *args: P.args, **kwargs: P.kwargs) -> TensorHandle:
            """Run the endpoint on every actor of the mesh, at this point of the tensor op
            stream (inside ``procs.activate()``), and return a handle to the tensor each rank's
            actor returned (not a Future). See ``monarch.tensor._rref``.

            Raises:
                ValueError: no active mesh.
                TypeError: the arguments do not match the endpoint.
                TensorOpError: on the first call with these arguments (which waits for the
                    ranks to report the result's shape), when it failed on every rank.
            """
            ...

    class RRefEndpointProperty(EndpointProperty[P, torch.Tensor]):
        """The mesh-proxy attribute of a ``$M.rref`` method."""

        @overload
        def __get__(self, instance: None, owner: type) -> RRefEndpointProperty[P]: ...
        @overload
        def __get__(self, instance: object, owner: type) -> RRefEndpoint[P]: ...
        def __get__(self, instance: object, owner: type) -> Any: ...

else:

    class TensorHandle:
        """The static type of a distributed tensor handle; at run time handles are
        ``monarch.Tensor`` (this placeholder only names the type)."""

    IdlEndpoint = RRefEndpoint = Endpoint
    IdlEndpointProperty = RRefEndpointProperty = EndpointProperty


def remote_rref(
    spec: EndpointSpec,
) -> Callable[[Callable[Concatenate[Any, P], torch.Tensor]], RRefEndpointProperty[P]]:
    """``remote`` for a ``$M.rref`` method: the same endpoint, typed with ``rref()``."""

    def make(fn: Callable[Concatenate[Any, P], torch.Tensor]) -> RRefEndpointProperty[P]:
        return EndpointProperty(fn, spec)  # type: ignore[return-value]  # RRefEndpointProperty is a static view of it

    return make
