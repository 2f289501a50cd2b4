"""The actor base classes and endpoint discovery.

``Actor`` is Monarch's plain base class (``from monarch.actor import Actor``); ``TypedActor[M]``
is the base of generated (IDL) actor classes and names the mesh proxy class ``M`` that
``ProcMesh.spawn`` returns for them.
"""

from __future__ import annotations

import abc
import functools
import inspect
import logging
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Protocol, TypeVar, get_args, get_origin

from .endpoint import EndpointProperty, EndpointSpec

if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Self

    from .._core.failure import MeshFailure
    from .._core.future import Future
    from .._core.shape import Extent

__all__ = ["Actor", "EndpointTable", "MixedEndpointsError", "SpawnsMesh", "TypedActor", "endpoint_table", "validate_actor_class"]

M = TypeVar("M")
M_co = TypeVar("M_co", covariant=True)


class Actor(abc.ABC):  # noqa: B024  # ABC so generated abstract endpoints are enforced
    """Base class of actors (Monarch's ``monarch.actor.Actor``).

    Subclasses define endpoints with ``@endpoint``. Hooks, all optional:

    - ``__supervise__(self, failure) -> bool``: a mesh this actor owns failed; runs on the
      actor's own thread/loop; True means handled.
    - ``__cleanup__(self, exc)``: the actor is being stopped (``exc`` None) or failed.
    """

    __monarch_mesh__: ClassVar[type | None] = None

    if TYPE_CHECKING:
        # The typing of plain Python actors' meshes (type checkers only; nothing here exists at
        # run time). ``ProcMesh.spawn("c", Counter)`` is typed as ``Counter``: the actor class
        # stands for its mesh in type land. Its ``@endpoint`` attributes are
        # ``Endpoint[P, R]`` (``EndpointProperty.__get__``), so arguments and results are checked
        # and an unknown endpoint is an attribute error; the mesh operations below make
        # ``spawn(...).slice(gpus=1).value.call_one().get()`` type-check without a ``cast``.
        # The price: inside an actor's own methods mypy also accepts ``self.slice(...)`` (no
        # such method at run time), and an endpoint named like a mesh operation (``stop``,
        # ``size``, ...) is reported as an incompatible override, rightly: a mesh's own
        # operation hides such an endpoint. A mypy plugin or an intersection type would avoid
        # this; plain mypy has neither.

        def slice(self, **kwargs: int | slice) -> Self: ...
        def flatten(self, name: str) -> Self: ...
        def rename(self, **kwargs: str) -> Self: ...
        def split(self, **kwargs: Any) -> Self: ...
        def size(self, dim: str | Sequence[str] | None = None) -> int: ...
        @property
        def extent(self) -> Extent: ...
        @property
        def sizes(self) -> dict[str, int]: ...
        @property
        def initialized(self) -> Future[None]: ...
        def stop(self) -> Future[None]: ...
        async def __aenter__(self) -> Self: ...
        async def __aexit__(self, *exc: object) -> None: ...

    @functools.cached_property
    def logger(self) -> logging.Logger:
        """A logger named after this actor's class (``type(self).__name__``, as Monarch names it),
        at level ``DEBUG``; looked up once per actor and cached on it. Assigning
        ``self.logger = ...`` replaces it for this actor. No handler is added (the library does
        not configure logging), so records go wherever the process's root logger sends them.
        """
        lgr = logging.getLogger(type(self).__name__)
        lgr.setLevel(logging.DEBUG)
        return lgr

    def __supervise__(self, failure: MeshFailure) -> bool | None:
        """Called when a mesh owned by this actor fails. Return True when handled."""
        return None

    def __cleanup__(self, exc: BaseException | None) -> Any:
        """Called once when the actor stops (exc None) or fails (exc the cause)."""
        return None


class TypedActor(Actor, Generic[M]):
    """Base of generated actor classes: ``class Trainer(TypedActor[TrainerMesh])``.

    The type argument is the mesh proxy class that spawning a subclass yields.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for base in getattr(cls, "__orig_bases__", ()):
            if get_origin(base) is TypedActor:
                args = get_args(base)
                if args and isinstance(args[0], type):
                    cls.__monarch_mesh__ = args[0]


class SpawnsMesh(Protocol[M_co]):
    """For type checkers: an actor class whose ``__monarch_mesh__`` is declared as
    ``ClassVar[type[XMesh]]``, as every generated actor class declares it; spawning it yields an
    ``XMesh``. A generated interface that ``extends`` another redeclares it with its own mesh, so
    its subclasses spawn as the derived mesh (``TypedActor[M]`` alone would give the first base's)."""

    @property
    def __monarch_mesh__(self) -> type[M_co]: ...


class MixedEndpointsError(TypeError, ValueError):
    """An actor class mixes sync and async endpoints (a ``ValueError``, as in Monarch, and a
    ``TypeError``, as it is a class definition error)."""


class EndpointTable:
    """The endpoints of one actor class: wire name -> (spec, implementation attribute)."""

    __slots__ = ("by_name", "is_async")

    def __init__(self, by_name: dict[str, tuple[EndpointSpec, str]], is_async: bool) -> None:
        self.by_name = by_name
        self.is_async = is_async


_TABLES: dict[type, EndpointTable] = {}


def _is_async_impl(fn: Any) -> bool:
    fn = inspect.unwrap(fn)
    return inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn)


def endpoint_table(cls: type) -> EndpointTable:
    """Discover the endpoints of ``cls`` (cached).

    Raises:
        MixedEndpointsError: sync and async endpoints are mixed (rejected at spawn, as in Monarch).
    """
    table = _TABLES.get(cls)
    if table is not None:
        return table
    by_name: dict[str, tuple[EndpointSpec, str]] = {}
    kinds: dict[str, bool] = {}
    for klass in reversed(cls.__mro__):
        for attr, value in vars(klass).items():
            spec: EndpointSpec | None = None
            if isinstance(value, EndpointProperty):
                spec = value._spec
            else:
                spec = getattr(value, "__monarch_endpoint__", None)
            if spec is None:
                continue
            by_name[spec.name] = (spec, attr)
    for name, (_spec, attr) in by_name.items():
        impl = inspect.getattr_static(cls, attr)
        if isinstance(impl, EndpointProperty):
            impl = impl._method
        if getattr(impl, "__isabstractmethod__", False):
            continue
        kinds[name] = _is_async_impl(impl)
    is_async = any(kinds.values())
    if is_async and not all(kinds.values()):
        sync = sorted(n for n, a in kinds.items() if not a)
        asyn = sorted(n for n, a in kinds.items() if a)
        raise MixedEndpointsError(
            f"actor class {cls.__qualname__} mixes both async and sync endpoints (sync {sync}, async {asyn}); "
            "make them all sync or all async (as Monarch requires)"
        )
    table = EndpointTable(by_name, is_async)
    _TABLES[cls] = table
    return table


def validate_actor_class(cls: Any) -> EndpointTable:
    """Check that ``cls`` can be spawned.

    Raises:
        TypeError: not an Actor subclass, abstract (unimplemented endpoints), or mixing
            sync and async endpoints.
    """
    if not isinstance(cls, type) or not issubclass(cls, Actor):
        raise TypeError(f"spawn() needs a subclass of monarch.actor.Actor, got {cls!r}")
    if inspect.isabstract(cls):
        missing = sorted(getattr(cls, "__abstractmethods__", ()))
        raise TypeError(f"cannot spawn abstract actor class {cls.__qualname__}: implement {missing}")
    table = endpoint_table(cls)
    for name, (_spec, attr) in table.by_name.items():
        impl = inspect.getattr_static(cls, attr)
        if getattr(impl, "__isabstractmethod__", False):
            raise TypeError(f"cannot spawn {cls.__qualname__}: endpoint {name!r} is not implemented")
    return table
