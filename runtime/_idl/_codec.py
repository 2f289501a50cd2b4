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
from ._rref import IdlEndpointProperty
from ._schema import method_modules
from ._struct import Struct
from ._types import FieldValueError

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
        method: ``(interface id, ordinal)`` of the method, to encode with its branded structs.
        qualname: ``Actor.endpoint`` (Python names), as encoding errors name the endpoint.
    """

    encoding = ENCODING_CAPNP

    def __init__(
        self,
        params: type[Struct] | None,
        results: type[Struct] | None,
        result_kind: ResultKind,
        method: tuple[int, int] | None = None,
        qualname: str = "",
    ) -> None:
        if results is None and result_kind != "none":
            raise ValueError(f"result_kind {result_kind!r} needs a results class")
        self.params = params
        self.results = results
        self.result_kind = result_kind
        self.method = method
        self.qualname = qualname or (params.__qualname__ if params is not None else "")
        self._pmod: Any = None
        self._rmod: Any = None
        if method is not None:
            self._pmod, self._rmod = method_modules(*method)
        self.param_names = () if params is None else tuple(f[0] for f in params.__capnp__.fields)
        self.result_names = () if results is None else tuple(f[0] for f in results.__capnp__.fields)
        # parameters after a required one that follows a defaulted one are keyword-only
        self.n_positional = _positional_count(params)

    def encode_call(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Encoded:
        """Build the parameter message; positional arguments follow the schema's order.

        Raises:
            TypeError: too many positional arguments.
            FieldValueError: a value its field's schema type cannot hold (a ``TypeError`` and a
                ``ValueError``): ``Worker.train: field 'batch' expects Batch, got str``.
        """
        if self.params is None:
            if args or kwargs:
                raise TypeError(f"{self.qualname}() takes no arguments, got {len(args) + len(kwargs)}")
            return EMPTY_STRUCT_MESSAGE, []
        if len(args) > self.n_positional:
            raise TypeError(
                f"{self.qualname}() takes {self.n_positional} positional arguments, {len(args)} given"
            )
        values = dict(zip(self.param_names, args))
        values.update(kwargs)
        try:
            return self.params(**values)._encode(True, self._pmod)
        except FieldValueError as exc:
            exc.where = self.qualname
            raise exc.with_traceback(None) from None

    def decode_call(
        self, payload: memoryview, buffers: list[memoryview]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """The arguments as positional values, in the schema's order (views over the payload)."""
        if self.params is None:
            return (), {}
        view = self.params._decode(payload, buffers, self._pmod)
        names = self.param_names
        n = self.n_positional
        args = tuple(getattr(view, name) for name in names[:n])
        return args, {name: getattr(view, name) for name in names[n:]}

    def encode_result(self, value: Any) -> Encoded:
        """Build the result message from what the endpoint returned.

        Raises:
            TypeError: a ``"struct"`` result that is not an instance of the result class.
            FieldValueError: a result value its field's schema type cannot hold, naming the
                endpoint's result and the field.
        """
        if self.result_kind == "none":
            return EMPTY_STRUCT_MESSAGE, []
        assert self.results is not None  # checked in __init__
        try:
            if self.result_kind == "single":
                return self.results(**{self.result_names[0]: value})._encode(True, self._rmod)
            if not isinstance(value, self.results):
                raise TypeError(
                    f"{self.qualname} must return a {self.results.__qualname__}, got {type(value).__qualname__}"
                )
            return value._encode(True, self._rmod)
        except FieldValueError as exc:
            exc.where = f"{self.qualname} result"
            raise exc.with_traceback(None) from None

    def decode_result(self, payload: memoryview, buffers: list[memoryview]) -> Any:
        """The result value: None, the single field's value, or a result struct view."""
        if self.result_kind == "none" or self.results is None:
            return None
        view = self.results._decode(payload, buffers, self._rmod)
        if self.result_kind == "single":
            return getattr(view, self.result_names[0])
        return view

    def __repr__(self) -> str:
        p = "()" if self.params is None else self.params.__qualname__
        r = "()" if self.results is None else self.results.__qualname__
        return f"<CapnpCodec {p} -> {r} ({self.result_kind})>"


EMPTY_STRUCT_MESSAGE = bytes.fromhex("0000000001000000fcffffff00000000")
"""A flat message whose root is an empty struct (what pycapnp writes): the params or results of
a method that declares none."""


def _positional_count(params: type[Struct] | None) -> int:
    """How many parameters may be passed by position: all of them, unless a required parameter
    follows one with a default (Python allows that only as keyword-only): then those before it."""
    if params is None:
        return 0
    seen_default = False
    init = inspect.signature(params.__init__)
    kw = [p for p in init.parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY]
    for i, p in enumerate(kw):
        if p.default is inspect.Parameter.empty and seen_default:
            return i
        seen_default = seen_default or p.default is not inspect.Parameter.empty
    return len(kw)


def _signature(params: type[Struct] | None) -> inspect.Signature:
    if params is None:
        return inspect.Signature([])
    init = inspect.signature(params.__init__)
    kw = [p for p in init.parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY]
    n = _positional_count(params)
    out = [p.replace(kind=inspect.Parameter.POSITIONAL_OR_KEYWORD) for p in kw[:n]] + kw[n:]
    return inspect.Signature(out)


def idl_endpoint(
    name: str,
    py_name: str,
    ordinal: int,
    params: type[Struct] | None,
    results: type[Struct] | None,
    result_kind: ResultKind,
    *,
    interface_id: int | None = None,
    stream: bool = False,
    explicit_response_port: bool = False,
    rref: bool = False,
    timeout_s: float | None = None,
    concurrent: bool = False,
    interface: str | None = None,
) -> EndpointSpec:
    """The runtime description of one schema method (generated code calls this once per method).

    Args:
        name: the schema's method name (the wire name).
        py_name: the Python method name (snake_case).
        ordinal: the method's ordinal in its interface.
        params: generated parameter struct class; None when the method takes no parameters
            (the empty struct is sent).
        results: generated result struct class; None when it has no results
            (``result_kind="none"``).
        result_kind: see :class:`CapnpCodec`.
        interface_id: the interface's node id; with ``ordinal`` it finds the method's branded
            params/results in the loaded schema (generic structs as direct params or results).
            None encodes with the classes' own (unbranded) nodes.
        stream: ``$M.stream``: the implementation yields results.
        explicit_response_port: ``$M.explicitResponsePort``: the implementation takes a port.
        rref: ``$M.rref`` (recorded in ``spec.extra``): the mesh proxy's attribute then offers
            a typed ``rref()`` (``remote_rref``), run by the tensor engine.
        timeout_s: ``$M.endpoint(timeoutS=...)``; None waits forever.
        concurrent: ``$M.endpoint(concurrent=true)``.
        interface: the Python name of the actor interface; errors at the call site name the
            endpoint ``interface.py_name`` (None: ``py_name`` alone).
    """
    qualname = f"{interface}.{py_name}" if interface else py_name
    return EndpointSpec(
        name=name,
        py_name=py_name,
        codec=CapnpCodec(
            params,
            results,
            result_kind,
            None if interface_id is None else (interface_id, ordinal),
            qualname,
        ),
        explicit_response_port=explicit_response_port,
        stream=stream,
        concurrent=concurrent,
        timeout_s=timeout_s,
        signature=_signature(params),
        ordinal=ordinal,
        extra={"rref": rref} if rref else {},
        qualname=qualname,
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
) -> Callable[[Callable[Concatenate[Any, P], R]], IdlEndpointProperty[P, R]]:
    """Turn a typed stub method of a generated mesh proxy into an endpoint with adverbs (all
    but ``rref``, which ``remote_rref`` adds for ``$M.rref`` methods)."""

    def make(fn: Callable[Concatenate[Any, P], R]) -> IdlEndpointProperty[P, R]:
        return EndpointProperty(fn, spec)  # type: ignore[return-value]  # IdlEndpointProperty is a static view of it

    return make
