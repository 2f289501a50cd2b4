"""The tensor engine's user-facing functions: ``fetch_shard``, ``inspect``, ``remote``,
``no_mesh`` and the ProcMesh hooks (``activate``, ``rank_tensor``). Semantics follow Meta
Monarch's ``monarch.fetch``, ``monarch.common.remote`` and ``DeviceMesh.rank``."""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import torch
from torch.utils._pytree import tree_flatten, tree_unflatten

from .._core.errors import ActorError
from .._core.future import Future
from ._client import client_for
from ._errors import TensorOpError
from ._tensor import (
    Tensor,
    _Walk,
    _wire,
    activate,
    active_client,
    call_remote,
    meta_empty,
    new_handle,
)
from ._wire import RANK

if TYPE_CHECKING:
    from ..actor import ProcMesh

T = TypeVar("T")


def fetch_shard(obj: T, shard: dict[str, int] | None = None, **kwargs: int) -> Future[T]:
    """Bring the values of the handles in ``obj`` from one rank to the client (Monarch's
    ``fetch_shard``).

    Args:
        obj: a pytree (tuples, lists, dicts) whose ``monarch.Tensor`` leaves are fetched; other
            leaves are returned as they are.
        shard: the rank's coordinates, e.g. ``{"gpus": 1}``; a dimension left out means
            coordinate 0 (None: rank 0, useful after a reduce).
        **kwargs: more coordinates, added to ``shard``.

    Returns:
        A Future of ``obj`` with every handle replaced by that rank's local tensor (CPU).
        It fails with ``TensorOpError`` (rank, op, remote exception and traceback) when one of
        the tensors failed on that rank.

    Raises:
        KeyError: a coordinate names no dimension of the mesh.
        ValueError: ``obj`` holds handles of two meshes.
    """
    coords = dict(shard or {})
    coords.update(kwargs)
    leaves, spec = tree_flatten(obj)
    pos = [i for i, x in enumerate(leaves) if type(x) is Tensor]
    if not pos:
        return Future.completed(obj)
    client = leaves[pos[0]]._client
    if any(leaves[i]._client is not client for i in pos):
        raise ValueError("fetch_shard: the handles belong to different meshes")
    inner = client.fetch([leaves[i]._id for i in pos], coords)
    out: Future[T] = Future()

    def done(f: Future[list[torch.Tensor]]) -> None:
        exc = f.exception()
        if exc is not None:
            if isinstance(exc, ActorError) and isinstance(exc.exception, TensorOpError):
                exc = exc.exception
            out.set_exception(exc)
            return
        got = list(leaves)
        for i, t in zip(pos, f.get()):
            got[i] = t
        out.set_result(tree_unflatten(got, spec))

    inner.add_done_callback(done)
    return out


def inspect(obj: T, shard: dict[str, int] | None = None, **kwargs: int) -> T:
    """``fetch_shard(obj, shard, **kwargs).result()`` (Monarch's ``inspect``): blocks.

    Raises:
        TensorOpError: a fetched tensor failed on that rank.
    """
    return fetch_shard(obj, shard, **kwargs).result()


class Remote:
    """A function that runs on every rank of the active mesh (Monarch's ``remote``): handles in
    its arguments arrive as the rank's local tensors; its result comes back as handles.

    Args:
        fn: the function, or the dotted path of one importable on the workers (``"torch.add"``).
        propagate: computes the result's metadata on the client from meta tensors; None means
            the function itself (run on meta tensors: fine for torch code); ``"inspect"``: no
            tensor result (the function runs for its effects).
    """

    def __init__(
        self, fn: Callable[..., Any] | str, propagate: Callable[..., Any] | str | None
    ) -> None:
        if propagate == "inspect":  # Monarch's spelling of "no tensor result"
            propagate = _no_result
        if propagate is not None and not callable(propagate):
            raise NotImplementedError(
                f"remote(propagate={propagate!r}): only a callable, 'inspect' or None is supported"
            )
        if propagate is None:
            propagate = _import(fn) if isinstance(fn, str) else fn
        self._fn = fn
        self._propagate = propagate
        functools.update_wrapper(self, fn if callable(fn) else propagate)

    def __repr__(self) -> str:
        return f"<monarch.remote {self._fn!r}>"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        client = active_client()
        if client is None and not _has_handle((args, kwargs)):
            raise ValueError(
                "calling a monarch.remote function requires an active mesh (`with procs.activate():`)"
            )
        return call_remote(self._fn, self._propagate, args, kwargs, client)

    def rref(self, *args: Any, **kwargs: Any) -> Any:
        """The same as calling it (Monarch's spelling)."""
        return self(*args, **kwargs)

    # -- the endpoint adverbs (Monarch's ``Remote`` implements its ``Endpoint`` protocol) ------
    # Each runs the function on the ranks of the active mesh (or of the handles in the
    # arguments) after every op issued before it, with handles arriving as the ranks' local
    # tensors, and brings its value back as an actor endpoint's result would come back.

    def _prepare(self, args: Any, kwargs: Any) -> tuple[Any, int, Any, Any]:
        w = _Walk()
        key: list[Any] = []
        wargs = _wire(args, w, key)
        wkwargs = _wire(kwargs, w, key)
        client = active_client()
        if client is None:
            client = w.client
        elif w.client is not None and w.client is not client:
            raise ValueError(
                f"{self!r}: a tensor of another mesh is used inside {client!r}.activate()"
            )
        if client is None:
            raise ValueError(
                f"{self!r}: calling a monarch.remote function requires an active mesh (`with procs.activate():`)"
            )
        fid = client.fn_id(self._fn)
        client.flush()  # the function runs after every op issued before it (per-sender FIFO)
        return client.workers.call_value, fid, wargs, wkwargs

    @property
    def _mesh(self) -> Any:
        """The mesh the function runs on (``monarch.actor.send`` reads its size)."""
        client = active_client()
        if client is None:
            raise ValueError(
                f"{self!r}: sending a monarch.remote function requires an active mesh (`with procs.activate():`)"
            )
        return client.workers

    def call(self, *args: Any, **kwargs: Any) -> Future[Any]:
        """Run on every rank; a Future of the ``ValueMesh`` of their values (Monarch's
        ``Remote.call``). It fails with ``ActorError`` when a rank raised (``TensorOpError``
        inside when an argument's tensor had failed there).

        Raises:
            ValueError: no active mesh, or handles of another mesh.
        """
        ep, fid, a, k = self._prepare(args, kwargs)
        return ep.call(fid, a, k)  # type: ignore[no-any-return]

    def call_one(self, *args: Any, **kwargs: Any) -> Future[Any]:
        """Run on the one rank of a one-rank mesh; a Future of its value.

        Raises:
            ValueError: no active mesh, or the mesh has more than one rank.
        """
        ep, fid, a, k = self._prepare(args, kwargs)
        return ep.call_one(fid, a, k)  # type: ignore[no-any-return]

    def choose(self, *args: Any, **kwargs: Any) -> Future[Any]:
        """Run on one rank of the mesh (chosen by the runtime); a Future of its value."""
        ep, fid, a, k = self._prepare(args, kwargs)
        return ep.choose(fid, a, k)  # type: ignore[no-any-return]

    def stream(self, *args: Any, **kwargs: Any) -> Any:
        """Run on every rank; what an endpoint's ``stream()`` gives: one Future per rank's value."""
        ep, fid, a, k = self._prepare(args, kwargs)
        return ep.stream(fid, a, k)

    def broadcast(self, *args: Any, **kwargs: Any) -> None:
        """Run on every rank for its effects; nothing comes back (errors fail that rank's
        tensor-store actor, as a broadcast endpoint's would)."""
        ep, fid, a, k = self._prepare(args, kwargs)
        ep.broadcast(fid, a, k)


Remote.__module__ = "monarch.tensor"


def remote(
    fn: Callable[..., Any] | str | None = None, *, propagate: Callable[..., Any] | str | None = None
) -> Any:
    """Make ``fn`` run on the workers (Monarch's ``monarch.remote``); also a decorator
    (``@remote(propagate=...)``).

    Args:
        fn: a function (pickled to the workers) or a dotted path (``"torch.add"``).
        propagate: a function of meta tensors giving the result's metadata; None: ``fn`` itself;
            ``"inspect"``: no tensor result. A function whose propagation gives no tensor
            (``propagate=lambda seed: None``) still runs on every rank, in op order, for its
            effects (seeding, logging); calling it returns None.

    Returns:
        A ``Remote``; with ``fn`` None, a decorator that makes one.
    """
    if fn is None:
        return functools.partial(remote, propagate=propagate)
    return Remote(fn, propagate)


def _no_result(*args: Any, **kwargs: Any) -> None:
    return None


def _import(path: str) -> Callable[..., Any]:
    mod, _, attr = path.rpartition(".")
    return getattr(importlib.import_module(mod), attr)  # type: ignore[no-any-return]


def _has_handle(obj: Any) -> bool:
    return any(type(x) is Tensor for x in tree_flatten(obj)[0])


class _NoMesh:
    """Monarch's ``no_mesh``: ``with monarch.no_mesh.activate():`` runs torch ops locally again."""

    def activate(self) -> AbstractContextManager[None]:
        return activate(None)

    def __repr__(self) -> str:
        return "monarch.no_mesh"


no_mesh = _NoMesh()


# -- ProcMesh hooks (ProcMesh.activate / rank_tensor / rank_tensors call these) ---------------


@contextmanager
def activate_procs(procs: ProcMesh) -> Iterator[None]:
    with activate(client_for(procs)):
        yield


def rank_tensor(procs: ProcMesh, dims: str | tuple[str, ...] | list[str]) -> Tensor:
    client = client_for(procs)
    names = (dims,) if isinstance(dims, str) else tuple(dims)
    for d in names:
        if d not in client.labels:
            raise KeyError(f"{procs!r} does not have dimension {d!r}")
    # combined rank over several dims is row-major in the order given (Monarch's rank())
    if len(names) > 1:
        out: Any = None
        with activate(client):
            for d in names:
                r = rank_tensor(procs, d)
                out = r if out is None else out * procs.size(d) + r
        return out  # type: ignore[no-any-return]
    h = new_handle(meta_empty((), torch.long), client, client.new_id())
    client.push((RANK, h._id, names))
    return h


def rank_tensors(procs: ProcMesh) -> dict[str, Tensor]:
    return {d: rank_tensor(procs, d) for d in client_for(procs).labels}


for _f in (fetch_shard, inspect, remote):
    _f.__module__ = "monarch"
