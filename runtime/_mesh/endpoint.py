"""Endpoints: the ``@endpoint`` decorator, endpoint metadata, and the typed adverbs.

Semantics follow Meta Monarch's ``monarch.actor.endpoint`` and ``Endpoint`` protocol: on a mesh,
an endpoint offers ``call_one``, ``call``, ``broadcast``, ``choose`` and ``stream``. Arguments are
checked against the endpoint's signature at the call site, before anything is sent.
"""

from __future__ import annotations

import difflib
import inspect
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Concatenate, Generic, ParamSpec, TypeVar, overload

from .._core.future import Future
from .._core.value_mesh import ValueMesh
from .._transport.codec import Codec

if TYPE_CHECKING:
    from .stream import Stream

__all__ = [
    "Endpoint",
    "EndpointProperty",
    "EndpointSpec",
    "concurrent_endpoint",
    "endpoint",
]

# the reserved endpoint name every actor answers once its __init__ has run (with None);
# ``ActorMesh.initialized`` calls it
INIT_PROBE = "__monarch_initialized__"

P = ParamSpec("P")
R = TypeVar("R")

# The tensor engine (monarch.tensor._rref, layer 5) registers here on import: ``rref(mesh,
# spec, args, kwargs)`` runs an endpoint at a point of the op stream and returns handles;
# ``invoke(mesh, spec, adverb, args, kwargs)`` sends a call whose arguments may hold handles.
# Until then (and without torch) neither is used: this module never imports the tensor engine.
_TENSOR_HOOKS: list[Any] = [None, None]

# actor side: the tensor call being decoded on this thread (set while its arguments unpickle,
# taken by the actor's dispatch, which runs the endpoint through the tensor engine); the dispatch
# looks only once a tensor call has reached this process (TENSOR_CALLS_SEEN), so other jobs pay
# one list read per message
class _TensorCall(threading.local):
    pending: Any = None  # a class default: reading it never raises (a missing attribute would
    # cost ~1.5 us per message through getattr's AttributeError)


_tensor_call = _TensorCall()
TENSOR_CALLS_SEEN = [False]


def take_tensor_call(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn``, or, when a tensor call was decoded for it on this thread, ``fn`` run through the
    tensor engine (a sync endpoint's call carrying ``monarch.Tensor`` handles or an ``rref``)."""
    p = _tensor_call.pending
    if p is None:
        return fn
    _tensor_call.pending = None

    def run(*args: Any, **kwargs: Any) -> Any:
        return p.run(fn, args, kwargs)

    return run


def set_tensor_hooks(rref: Callable[..., Any], invoke: Callable[..., Any]) -> None:
    """Called by ``monarch.tensor`` on import (see ``_TENSOR_HOOKS``)."""
    _TENSOR_HOOKS[0] = rref
    _TENSOR_HOOKS[1] = invoke


@dataclass(eq=False)
class EndpointSpec:
    """Everything the runtime needs to know about one endpoint of an actor class.

    Attributes:
        name: the wire name (the schema's method name on the IDL path, the method name else).
        py_name: the Python attribute that implements it on the actor class.
        codec: encodes arguments and results; None means the pickle codec.
        explicit_response_port: the implementation takes a ``Port[R]`` first and answers on it.
        stream: the implementation is a generator (or async generator) yielding results.
        concurrent: async handlers of this endpoint may overlap (Monarch's concurrent endpoints).
        timeout_s: default call timeout in seconds; None waits forever.
        signature: the user-facing signature (no ``self``, no port), used to check arguments.
        ordinal: the schema's method ordinal on the IDL path, -1 for Python endpoints.
        qualname: ``Actor.endpoint`` (Python names) as errors at the call site show it; empty
            means ``name``.
    """

    name: str
    py_name: str
    codec: Codec | None = None
    explicit_response_port: bool = False
    stream: bool = False
    concurrent: bool = False
    timeout_s: float | None = None
    signature: inspect.Signature | None = None
    ordinal: int = -1
    extra: dict[str, Any] = field(default_factory=dict)
    qualname: str = ""
    _arity: int | None = field(default=None, init=False, repr=False, compare=False)

    def check_arguments(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Raise ``TypeError`` at the call site when the arguments do not bind to the signature."""
        if self.signature is None:
            return
        arity = self._arity
        if arity is None:
            arity = self._arity = _simple_arity(self.signature)
        if not kwargs and len(args) == arity:
            return  # binds: every parameter is positional-or-keyword without a default
        try:
            self.signature.bind(*args, **kwargs)
        except TypeError as exc:
            who = self.qualname or self.name
            # a misspelled keyword leaves its parameter unbound: ``bind`` reports that one as
            # missing, so name the keyword it did not expect first
            params = self.signature.parameters
            kinds = {p.kind for p in params.values()}
            if inspect.Parameter.VAR_KEYWORD not in kinds:
                by_keyword = [
                    n for n, p in params.items()
                    if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
                ]  # fmt: skip
                for k in kwargs:
                    if k not in by_keyword:
                        close = difflib.get_close_matches(k, by_keyword, n=1)
                        hint = f" (did you mean {close[0]!r}?)" if close else ""
                        raise TypeError(
                            f"{who}() got an unexpected keyword argument {k!r}{hint}"
                        ) from None
            raise TypeError(f"{who}(): {exc}") from None


def _simple_arity(sig: inspect.Signature) -> int:
    """The number of parameters when all are plain positional-or-keyword without defaults
    (then exactly that many positional arguments bind), else -1."""
    for p in sig.parameters.values():
        if (
            p.kind is not inspect.Parameter.POSITIONAL_OR_KEYWORD
            or p.default is not inspect.Parameter.empty
        ):
            return -1
    return len(sig.parameters)


def _user_signature(
    fn: Callable[..., Any], explicit_response_port: bool
) -> inspect.Signature | None:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    params = list(sig.parameters.values())
    drop = 1 + (1 if explicit_response_port else 0)  # self (+ port)
    return sig.replace(parameters=params[drop:])


class Endpoint(Generic[P, R]):
    """An endpoint of a mesh, with its adverbs.

    Each adverb checks its arguments against the endpoint's signature and raises ``TypeError``
    before anything is sent.
    """

    __slots__ = ("_mesh", "_spec")

    def __init__(self, mesh: Any, spec: EndpointSpec) -> None:
        self._mesh = mesh
        self._spec = spec

    def call_one(self, *args: P.args, **kwargs: P.kwargs) -> Future[R]:
        """Call the one actor of a one-actor mesh.

        Raises:
            ValueError: the mesh does not have exactly one actor.
            TypeError: the arguments do not match the endpoint.

        ``monarch.Tensor`` handles in the arguments arrive as the actor's rank's local tensor
        (inside ``procs.activate()``; see ``rref``).
        """
        inv = _TENSOR_HOOKS[1]
        if inv is not None:
            return inv(self._mesh, self._spec, "call_one", args, kwargs)  # type: ignore[no-any-return]
        return self._mesh._invoke(self._spec, "call_one", args, kwargs)  # type: ignore[no-any-return]

    def call(self, *args: P.args, **kwargs: P.kwargs) -> Future[ValueMesh[R]]:
        """Call every actor of the mesh; the future's ``ValueMesh`` is shaped like the mesh.

        ``monarch.Tensor`` handles in the arguments arrive as each rank's local tensor.
        """
        inv = _TENSOR_HOOKS[1]
        if inv is not None:
            return inv(self._mesh, self._spec, "call", args, kwargs)  # type: ignore[no-any-return]
        return self._mesh._invoke(self._spec, "call", args, kwargs)  # type: ignore[no-any-return]

    def broadcast(self, *args: P.args, **kwargs: P.kwargs) -> None:
        """Send to every actor without waiting; a failing handler fails its actor (supervision).

        ``monarch.Tensor`` handles in the arguments arrive as each rank's local tensor.
        """
        inv = _TENSOR_HOOKS[1]
        if inv is not None:
            inv(self._mesh, self._spec, "broadcast", args, kwargs)
            return
        self._mesh._invoke(self._spec, "broadcast", args, kwargs)

    def rref(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run the endpoint on every actor at this point of the active mesh's op stream, on the
        ranks' real local tensors, and return handles (``monarch.Tensor``) to the tensors it
        returns: not a Future (Monarch's ``Endpoint.rref``).

        The handles' shapes come from ``@endpoint(propagate=fn)`` (``fn`` is called on the
        client with the arguments as meta tensors); ``propagate="inspect"`` runs it for its
        effects and returns None. Ops issued before it are visible to it, ops after it see its
        results; a failure poisons the results like a failing op. Needs ``monarch.tensor``
        (torch), a sync actor and a synchronous endpoint.

        Raises:
            ValueError: no active mesh, or the endpoint declares no ``propagate``.
            TypeError: the arguments do not match the endpoint.
            NotImplementedError: an IDL (capnp-coded) endpoint.
        """
        if _TENSOR_HOOKS[0] is None:
            import importlib

            importlib.import_module("monarch.tensor._rref")
        return _TENSOR_HOOKS[0](self._mesh, self._spec, args, kwargs)  # type: ignore[no-any-return]

    def choose(self, *args: P.args, **kwargs: P.kwargs) -> Future[R]:
        """Call one actor of the mesh, chosen by the runtime (round robin)."""
        return self._mesh._invoke(self._spec, "choose", args, kwargs)  # type: ignore[no-any-return]

    def stream(self, *args: P.args, **kwargs: P.kwargs) -> Stream[R]:
        """Call every actor; iterate the results in arrival order.

        ``async for value in ep.stream(...)`` yields each result; ``for fut in ep.stream(...)``
        yields completed futures (Monarch's ``Iterator[Future[R]]``). A ``$stream``/generator
        endpoint contributes every item it yields.
        """
        return self._mesh._invoke(self._spec, "stream", args, kwargs)  # type: ignore[no-any-return]

    def with_timeout(self, timeout_s: float | None) -> Endpoint[P, R]:
        """This endpoint with a per-call timeout: its futures raise ``CallTimeout`` after
        ``timeout_s`` seconds (None: wait forever), overriding ``@endpoint(timeout=...)``.

        Raises:
            ValueError: ``timeout_s`` is not positive.
        """
        import dataclasses

        if timeout_s is not None and timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        return Endpoint(self._mesh, dataclasses.replace(self._spec, timeout_s=timeout_s))

    def __repr__(self) -> str:
        return f"<Endpoint {self._spec.name!r} of {self._mesh!r}>"


class EndpointProperty(Generic[P, R]):
    """The class attribute that ``@endpoint`` leaves on an actor class.

    On an actor instance it gives the plain bound method (an actor may call itself directly);
    on a mesh it gives an :class:`Endpoint` with the adverbs.
    """

    def __init__(self, method: Callable[..., Any], spec: EndpointSpec) -> None:
        self._method = method
        self._spec = spec
        self.__doc__ = method.__doc__
        self.__name__ = getattr(method, "__name__", spec.py_name)
        self.__wrapped__ = method

    def __set_name__(self, owner: type, name: str) -> None:
        self._spec.py_name = name

    @overload
    def __get__(self, instance: None, owner: type) -> EndpointProperty[P, R]: ...
    @overload
    def __get__(self, instance: object, owner: type) -> Endpoint[P, R]: ...
    def __get__(self, instance: object, owner: type) -> Any:
        if instance is None:
            return self
        if getattr(instance, "_is_actor_mesh", False):
            return Endpoint(instance, self._spec)
        return self._method.__get__(instance, owner)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._method(*args, **kwargs)

    @property
    def _explicit_response_port(self) -> bool:
        """Whether the runtime answers this endpoint through a response port (explicit ports,
        and concurrent endpoints, whose body runs as a task that answers later: Monarch's
        attribute of the same name)."""
        return self._spec.explicit_response_port or self._spec.concurrent


def _make(
    fn: Callable[..., Any],
    *,
    explicit_response_port: bool,
    concurrent: bool = False,
    timeout_s: float | None = None,
    propagate: Any = None,
) -> EndpointProperty[Any, Any]:
    is_gen = inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn)
    spec = EndpointSpec(
        name=fn.__name__,
        py_name=fn.__name__,
        explicit_response_port=explicit_response_port,
        stream=is_gen,
        concurrent=concurrent,
        timeout_s=timeout_s,
        signature=_user_signature(fn, explicit_response_port),
        qualname=getattr(fn, "__qualname__", fn.__name__).rpartition("<locals>.")[2],
    )
    if propagate is not None:
        if not (callable(propagate) or propagate == "inspect"):
            raise ValueError(f"propagate must be a callable or 'inspect', got {propagate!r}")
        spec.extra["propagate"] = propagate
    return EndpointProperty(fn, spec)


class _EndpointIfy:
    def __init__(
        self,
        explicit_response_port: bool,
        concurrent: bool,
        timeout_s: float | None,
        propagate: Any = None,
    ) -> None:
        self._erp = explicit_response_port
        self._concurrent = concurrent
        self._timeout_s = timeout_s
        self._propagate = propagate

    def __call__(self, fn: Callable[..., Any]) -> Any:
        return _make(
            fn,
            explicit_response_port=self._erp,
            concurrent=self._concurrent,
            timeout_s=self._timeout_s,
            propagate=self._propagate,
        )


@overload
def endpoint(method: Callable[Concatenate[Any, P], Awaitable[R]]) -> EndpointProperty[P, R]: ...
@overload
def endpoint(method: Callable[Concatenate[Any, P], AsyncIterator[R]]) -> EndpointProperty[P, R]: ...
@overload
def endpoint(method: Callable[Concatenate[Any, P], Iterator[R]]) -> EndpointProperty[P, R]: ...
@overload
def endpoint(method: Callable[Concatenate[Any, P], R]) -> EndpointProperty[P, R]: ...
@overload
def endpoint(
    *,
    propagate: Any = ...,
    explicit_response_port: bool = ...,
    concurrent: bool = ...,
    timeout: float | None = ...,
) -> Any: ...
def endpoint(
    method: Callable[..., Any] | None = None,
    *,
    propagate: Any = None,
    explicit_response_port: bool = False,
    concurrent: bool = False,
    timeout: float | None = None,
) -> Any:
    """Mark an actor method as an endpoint (Monarch's ``@endpoint``).

    Args:
        method: the method (when used bare as ``@endpoint``).
        propagate: for ``ep.rref(...)``: a function called on the client with the arguments as
            meta tensors, returning tensors shaped like the endpoint's result; or ``"inspect"``
            (the endpoint returns no tensor). None: the endpoint cannot be ``rref``-ed.
        explicit_response_port: the method takes a ``Port`` after ``self`` and answers on it,
            possibly later or from another thread; exceptions then fail the actor.
        concurrent: async handlers may run concurrently with each other.
        timeout: default call timeout in seconds for callers (``CallTimeout``).

    A generator or async-generator method becomes a streaming endpoint.

    Raises:
        ValueError: ``propagate`` is neither a callable, ``"inspect"`` nor None.
    """
    if method is not None:
        return _make(method, explicit_response_port=False)
    if propagate is not None and not (callable(propagate) or propagate == "inspect"):
        raise ValueError(f"propagate must be a callable or 'inspect', got {propagate!r}")
    return _EndpointIfy(explicit_response_port, concurrent, timeout, propagate)


def concurrent_endpoint(
    method: Callable[..., Any] | None = None,
    *,
    propagate: Any = None,
    explicit_response_port: bool = False,
    instrument: bool = True,
    timeout: float | None = None,
) -> Any:
    """Mark an async actor method as an endpoint whose body runs as a task (Monarch's
    ``@concurrent_endpoint``).

    The actor starts the body and goes on with its next message, so several calls may be in
    progress at once; bodies start in the order their messages arrive (from one sender), but may
    finish in any order. Tasks still running when the actor stops are cancelled and awaited
    before ``__cleanup__`` runs. An exception from a body without an explicit response port goes
    to the caller as ``ActorError`` (the actor survives); an exception escaping a body with
    ``explicit_response_port=True`` fails the actor, as for ``@endpoint(explicit_response_port=True)``.

    Args:
        method: the method (when used bare as ``@concurrent_endpoint``).
        propagate: the tensor engine's shape propagator, as for ``@endpoint``; concurrent
            (async) endpoints cannot be ``rref``-ed, so it is recorded but ``rref`` refuses them.
        explicit_response_port: the method takes a ``Port`` after ``self`` and answers on it.
        instrument: Monarch's telemetry switch; this runtime has no per-endpoint telemetry, so
            both values behave the same.
        timeout: default call timeout in seconds for callers (``CallTimeout``).

    Raises:
        ValueError: ``method`` is already an ``@endpoint``, or is not an ``async def``, or
            ``propagate`` is neither a callable, ``"inspect"`` nor None.
    """

    def wrap(fn: Callable[..., Any]) -> EndpointProperty[Any, Any]:
        if isinstance(fn, EndpointProperty):
            raise ValueError(
                "concurrent_endpoint does not wrap @endpoint; pass endpoint options to @concurrent_endpoint"
            )
        target = inspect.unwrap(fn)
        if not (inspect.iscoroutinefunction(target) or inspect.isasyncgenfunction(target)):
            raise ValueError(
                f"concurrent_endpoint can only wrap async endpoints; {getattr(fn, '__qualname__', fn)!r} is not async"
            )
        return _make(
            fn,
            explicit_response_port=explicit_response_port,
            concurrent=True,
            timeout_s=timeout,
            propagate=propagate,
        )

    return wrap if method is None else wrap(method)
