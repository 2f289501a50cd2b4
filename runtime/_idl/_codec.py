"""The Cap'n Proto payload codec of generated endpoints, and endpoint declaration helpers.

The payload of a call is the flat Cap'n Proto message of the method's parameter struct; of a
result, the message of its result struct. Large Data and tensor bytes travel as out-of-band
buffers (convention in :mod:`monarch._idl._types`); decoding returns views, never copies.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, Concatenate, Literal, ParamSpec, TypeVar

from .._mesh.endpoint import EndpointProperty, EndpointSpec
from .._transport.codec import ENCODING_CAPNP, Encoded
from ._struct import Struct

__all__ = ["CapnpCodec", "idl_endpoint", "implements", "remote"]

P = ParamSpec("P")
R = TypeVar("R")
F = TypeVar("F", bound=Callable[..., Any])

ResultKind = Literal["none", "single", "struct"]


class CapnpCodec:
    """Encodes one endpoint's calls and results as its schema's param/result structs.

    Args:
        params: the generated class of the parameter struct; its fields, in order, are the
            endpoint's parameters.
        results: the generated class of the result struct.
        result_kind: ``"none"`` (no result field: the value is None), ``"single"`` (one field:
            the value is that field) or ``"struct"`` (the value is a ``results`` instance).
    """

    encoding = ENCODING_CAPNP

    def __init__(
        self, params: type[Struct], results: type[Struct], result_kind: ResultKind
    ) -> None:
        self.params = params
        self.results = results
        self.result_kind = result_kind
        self.param_names = tuple(py for py, _, _, _ in params.__capnp__.fields)
        self.result_names = tuple(py for py, _, _, _ in results.__capnp__.fields)

    def encode_call(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Encoded:
        """Build the parameter message; positional arguments follow the schema's order.

        Raises:
            TypeError: too many positional arguments, or a value of the wrong kind.
        """
        if len(args) > len(self.param_names):
            raise TypeError(f"takes {len(self.param_names)} arguments, {len(args)} given")
        values = dict(zip(self.param_names, args))
        values.update(kwargs)
        return self.params(**values)._encode()

    def decode_call(
        self, payload: memoryview, buffers: list[memoryview]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """The arguments as positional values, in the schema's order (views over the payload)."""
        view = self.params._decode(payload, buffers)
        return tuple(getattr(view, name) for name in self.param_names), {}

    def encode_result(self, value: Any) -> Encoded:
        """Build the result message from what the endpoint returned.

        Raises:
            TypeError: a ``"struct"`` result that is not an instance of the result class.
        """
        if self.result_kind == "none":
            return self.results()._encode()
        if self.result_kind == "single":
            return self.results(**{self.result_names[0]: value})._encode()
        if not isinstance(value, self.results):
            raise TypeError(
                f"endpoint must return a {self.results.__qualname__}, got {type(value).__qualname__}"
            )
        return value._encode()

    def decode_result(self, payload: memoryview, buffers: list[memoryview]) -> Any:
        """The result value: None, the single field's value, or a result struct view."""
        if self.result_kind == "none":
            return None
        view = self.results._decode(payload, buffers)
        if self.result_kind == "single":
            return getattr(view, self.result_names[0])
        return view

    def __repr__(self) -> str:
        return f"<CapnpCodec {self.params.__qualname__} -> {self.results.__qualname__} ({self.result_kind})>"


def _signature(params: type[Struct]) -> inspect.Signature:
    init = inspect.signature(params.__init__)
    out = [
        p.replace(kind=inspect.Parameter.POSITIONAL_OR_KEYWORD)
        for p in init.parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    ]
    return inspect.Signature(out)


def idl_endpoint(
    name: str,
    py_name: str,
    ordinal: int,
    params: type[Struct],
    results: type[Struct],
    result_kind: ResultKind,
    *,
    stream: bool = False,
    explicit_response_port: bool = False,
    rref: bool = False,
    timeout_s: float | None = None,
    concurrent: bool = False,
) -> EndpointSpec:
    """The runtime description of one schema method (generated code calls this once per method).

    Args:
        name: the schema's method name (the wire name).
        py_name: the Python method name (snake_case).
        ordinal: the method's ordinal in its interface.
        params: generated parameter struct class.
        results: generated result struct class.
        result_kind: see :class:`CapnpCodec`.
        stream: ``$M.stream``: the implementation yields results.
        explicit_response_port: ``$M.explicitResponsePort``: the implementation takes a port.
        rref: ``$M.rref`` (recorded in ``spec.extra``; the adverb is not generated yet).
        timeout_s: ``$M.endpoint(timeoutS=...)``; None waits forever.
        concurrent: ``$M.endpoint(concurrent=true)``.
    """
    return EndpointSpec(
        name=name,
        py_name=py_name,
        codec=CapnpCodec(params, results, result_kind),
        explicit_response_port=explicit_response_port,
        stream=stream,
        concurrent=concurrent,
        timeout_s=timeout_s,
        signature=_signature(params),
        ordinal=ordinal,
        extra={"rref": rref} if rref else {},
    )


def implements(spec: EndpointSpec) -> Callable[[F], F]:
    """Mark an abstract actor method as the implementation point of ``spec``.

    The runtime finds endpoints by walking the actor class's MRO for ``__monarch_endpoint__``
    and dispatches the wire name to the subclass's attribute ``spec.py_name``.
    """

    def mark(fn: F) -> F:
        fn.__monarch_endpoint__ = spec  # type: ignore[attr-defined]  # function attribute
        return fn

    return mark


def remote(
    spec: EndpointSpec,
) -> Callable[[Callable[Concatenate[Any, P], R]], EndpointProperty[P, R]]:
    """Turn a typed stub method of a generated mesh proxy into an endpoint with adverbs."""

    def make(fn: Callable[Concatenate[Any, P], R]) -> EndpointProperty[P, R]:
        return EndpointProperty(fn, spec)

    return make
