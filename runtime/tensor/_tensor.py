"""``monarch.Tensor``: a client-side handle to one local tensor per rank of a ProcMesh, and the
dispatch that turns torch calls on handles (and factories inside ``activate()``) into commands.

A handle is a ``torch.Tensor`` subclass wrapping a storage-less meta tensor, so its shape,
dtype and strides are ordinary tensor metadata on the client. Every torch call on a handle comes
to ``dispatch`` (the handle's ``__torch_function__``, or the active mesh's ``TorchFunctionMode``
inside ``activate()``), which computes the result's metadata by running the op on meta tensors
(cached per op and input metadata), makes result handles, and queues one command for the
workers. Semantics follow Monarch's ``monarch.common.tensor`` (Meta Monarch).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten, tree_unflatten

from ._client import MeshClient
from ._wire import CALL, Ref

_EXPLAIN_LOCAL = (
    "a torch op on a local (non-distributed) tensor inside `with procs.activate():`; "
    "use `with monarch.no_mesh.activate():` for local compute, or `monarch.fetch_shard` / "
    "`monarch.inspect` to bring a shard to the client"
)


if TYPE_CHECKING:  # the static type that generated rref() endpoints return
    from .._idl._rref import TensorHandle as _HandleBase
else:
    _HandleBase = torch.Tensor


class Tensor(_HandleBase):
    """A handle to a tensor that lives on every rank of a ProcMesh (Monarch's ``monarch.Tensor``).

    Its ``shape``/``dtype``/``stride()`` are known on the client (meta propagation); its values
    live on the workers: read them with ``monarch.fetch_shard`` or ``monarch.inspect``. Deleting
    the last reference frees the tensor on every rank (batched with the next message).
    """

    _client: MeshClient
    _id: int
    _fake: torch.Tensor
    # one placement per mesh dimension (the handle is then one global tensor of shape ``shape``),
    # or None: one tensor per rank, each of shape ``shape`` (see _placement)
    _placements: tuple[Any, ...] | None = None
    # where the ranks' tensors live: "cpu", or "cuda" (each rank's own device, cuda:LOCAL_RANK)
    _dev: str = "cpu"

    def __repr__(self, *, tensor_contents: Any = None) -> str:  # type: ignore[override]  # mypy reads torch's untyped keyword as a mismatch
        with torch._C.DisableTorchFunction():
            shape = list(self.shape)
            dtype = self.dtype
        ext = dict(zip(self._client.labels, self._client.sizes))
        pls = "" if self._placements is None else f", placements={self._placements}"
        dev = "" if self._dev == "cpu" else f", device={self._dev}"
        return f"monarch.Tensor(id={self._id}, shape={shape}, dtype={dtype}{dev}, mesh={ext}{pls})"

    def __del__(self) -> None:
        c = self.__dict__.get("_client")
        if c is not None:
            c.deletes.append(self._id)  # list.append: atomic, safe from a GC on any thread

    def __reduce_ex__(self, protocol: Any) -> Any:
        # as an argument of an actor endpoint: the receiving rank's local tensor (see _rref)
        from ._rref import reduce_handle

        reduced = reduce_handle(self)
        if self._placements is not None:  # the endpoint gets a LocalShard (to_dtensor() works)
            from ._redistribute import placed_local

            layout = (self._client.token, tuple(self._fake.shape), self._placements)
            return (placed_local, (*reduced[1], layout))
        return reduced

    @classmethod
    def __torch_function__(cls, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        return dispatch(func, args, kwargs or {}, None)

    @property
    def device(self) -> torch.device:  # type: ignore[override]  # a property of TensorBase in torch
        """Where the ranks' tensors live: ``cpu``, or ``cuda`` (each rank's own device,
        ``cuda:LOCAL_RANK``; no index, as it differs per rank). Fetched values are on the CPU."""
        return torch.device(self._dev)

    @property
    def is_cuda(self) -> bool:  # type: ignore[override]  # as device
        """The ranks' tensors are CUDA tensors."""
        return self._dev == "cuda"

    @property
    def placements(self) -> tuple[Any, ...] | None:
        """How the global tensor lies over the mesh: one ``Shard(d)``, ``Replicate()`` or
        ``Partial(op)`` per mesh dimension (mesh order); None for a per-rank handle (made by
        ops inside ``activate()`` on per-rank tensors, factories, ``rref``, remote functions):
        then each rank holds its own tensor of shape ``shape`` and there is no global tensor."""
        return self._placements

    def redistribute(self, placements: Any) -> Tensor:
        """The same global tensor placed as ``placements`` (DTensor's ``redistribute``), moved
        with collectives over the mesh dimensions that change: Shard -> Replicate all_gather,
        Partial -> Replicate all_reduce, Partial -> Shard reduce_scatter, Shard(i) -> Shard(j)
        all_to_all (even sizes; otherwise all_gather and a local chunk), Replicate -> Shard a
        local chunk, Replicate -> Partial local (zeros off coordinate 0 for ``sum``).

        Args:
            placements: one per mesh dimension, or ``{label: placement}`` (left out: Replicate).

        Returns:
            A new placed handle of the same shape and dtype.

        Raises:
            ShardingError: this handle has no placements, the placements do not fit, or
                Partial to a Partial of another reduce_op.
        """
        from ._distribute import redistribute

        return redistribute(self, placements)

    def to_local(self) -> Tensor:
        """A per-rank handle (no placements) of each rank's part (DTensor's ``to_local``).

        Raises:
            ShardingError: no placements, or parts of different shapes (uneven shards).
        """
        from ._distribute import to_local

        return to_local(self)

    def to_dtensor(self) -> Any:
        """Not on the client: a DTensor lives on the workers.

        Raises:
            TypeError: always; call ``to_dtensor()`` on the ``monarch.tensor.LocalShard`` that a
                remote function or an actor endpoint receives for this handle.
        """
        raise TypeError(
            "to_dtensor() runs on the workers: pass the handle to a monarch.remote function or an "
            "actor endpoint and call to_dtensor() on the LocalShard it receives"
        )

    def reduce(
        self,
        dims: str | tuple[str, ...] | list[str],
        reduction: str = "sum",
        scatter: bool = False,
        mesh: Any = None,
    ) -> Tensor:
        """Combine this tensor across the ranks along ``dims`` (Monarch's ``Tensor.reduce``).

        Args:
            dims: a mesh dimension name, or several (all of them when empty).
            reduction: ``sum avg product min max band bor bxor`` (all_reduce), or ``stack``
                (all_gather: a new leading dimension of the group's size).
            scatter: split the result across the group: with a reduction it is reduce_scatter
                (the input's leading dimension must equal the group size and is removed), with
                ``stack`` it is all_to_all (same shape as the input).
            mesh: not supported (must be None).

        Returns:
            A new handle, on every rank of the mesh.

        Raises:
            KeyError: a dim is not a dimension of the mesh.
            ValueError: an unknown reduction, a repeated dim, ``stack``/``scatter`` over several
                dims, or ``mesh`` given.
            TypeError: ``scatter`` with a leading dimension that is not the group size.
        """
        from ._reduce import reduce

        _per_rank_only(self)
        return reduce(self, dims, reduction, scatter, mesh, inplace=False)

    def reduce_(
        self,
        dims: str | tuple[str, ...] | list[str],
        reduction: str = "sum",
        scatter: bool = False,
        mesh: Any = None,
    ) -> Tensor:
        """``reduce`` in place: this handle names the result (shape must be unchanged)."""
        from ._reduce import reduce

        _per_rank_only(self)
        return reduce(self, dims, reduction, scatter, mesh, inplace=True)


Tensor.__module__ = "monarch"


def _per_rank_only(t: Tensor) -> None:
    if t._placements is not None:
        from .._core.errors import ShardingError

        raise ShardingError(
            f"reduce() combines per-rank tensors; {t!r} has placements: use t.redistribute(...), "
            "or t.to_local().reduce(...)"
        )


def meta_empty(shape: Any, dtype: torch.dtype) -> torch.Tensor:
    """A storage-less tensor, made without going through the active mesh's mode."""
    with torch._C.DisableTorchFunction():
        return torch.empty(shape, dtype=dtype, device="meta")


def new_handle(meta: torch.Tensor, client: MeshClient, id: int, device: str = "cpu") -> Tensor:
    h: Tensor = torch.Tensor._make_subclass(Tensor, meta)
    h._client = client
    h._id = id
    h._fake = meta
    if device != "cpu":
        h._dev = device
    return h


# -- the active mesh ------------------------------------------------------------------------


class _Active(TorchFunctionMode):
    """Inside ``procs.activate()``: every torch call comes here first."""

    def __init__(self, client: MeshClient | None) -> None:
        super().__init__()
        self.client = client

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if self.client is None:  # no_mesh: local compute, past the activated meshes' modes below
            with torch._C.DisableTorchFunction():
                return dispatch(func, args, kwargs or {}, None)
        return dispatch(func, args, kwargs or {}, self.client)


_state = threading.local()


def active_client() -> MeshClient | None:
    stack: list[MeshClient | None] = getattr(_state, "stack", [])
    return stack[-1] if stack else None


@contextmanager
def activate(client: MeshClient | None) -> Iterator[None]:
    """Make ``client``'s mesh the target of torch ops in this thread (None: ops run locally)."""
    stack: list[MeshClient | None] = _state.__dict__.setdefault("stack", [])
    stack.append(client)
    try:
        with _Active(client):
            yield
    finally:
        stack.pop()
        if client is not None:
            client.flush()


# -- dispatch -------------------------------------------------------------------------------


@contextmanager
def _bare() -> Iterator[None]:
    """No torch-function mode at all: a handler of one mode still runs under the modes below
    it (an outer ``activate()``), and the meta work here must not reach them."""
    popped = []
    while torch._C._len_torch_function_stack() > 0:
        popped.append(torch._C._pop_torch_function_stack())
    try:
        yield
    finally:
        for m in reversed(popped):
            torch._C._push_on_torch_function_stack(m)


_cache: dict[Any, Any] = {}
_NOKEY = object()


class _Walk:
    __slots__ = ("client", "handles", "hashable", "meta", "plain")

    def __init__(self) -> None:
        self.handles: list[Tensor] = []
        self.plain = False
        self.meta = False
        self.hashable = True
        self.client: MeshClient | None = None


def _wire(obj: Any, w: _Walk, key: list[Any]) -> Any:
    """``obj`` with handles replaced by ``Ref``s; appends ``obj``'s cache key parts to ``key``."""
    t = type(obj)
    if t is Tensor:
        if w.client is None:
            w.client = obj._client
        elif obj._client is not w.client:
            raise ValueError(
                f"an op mixes tensors of two meshes: {obj!r} and a tensor of {w.client!r}"
            )
        w.handles.append(obj)
        f = obj._fake
        key.append((f.shape, f.stride(), f.dtype, f.storage_offset(), obj._dev))
        return Ref(obj._id)
    if t is tuple or t is list:
        key.append(t)
        key.append(len(obj))
        out = [_wire(o, w, key) for o in obj]
        return tuple(out) if t is tuple else out
    if t is dict:
        key.append(dict)
        out_d = {}
        for k, v in obj.items():
            key.append(k)
            out_d[k] = _wire(v, w, key)
        return out_d
    if isinstance(obj, torch.Tensor):
        if obj.device.type == "meta":  # no data: metadata work (ours or the user's) stays local
            w.meta = True
            key.append(_NOKEY)
            w.hashable = False
        else:
            w.plain = True
        return obj
    if t is slice:
        key.append((slice, obj.start, obj.stop, obj.step))
        return obj
    try:
        hash(obj)
    except TypeError:
        w.hashable = False
        return obj
    key.append(t)
    key.append(obj)
    return obj


def _to_meta(obj: Any) -> Any:
    t = type(obj)
    if t is Tensor:
        return obj._fake
    if t is tuple or t is list:
        out = [_to_meta(o) for o in obj]
        return tuple(out) if t is tuple else out
    if t is dict:
        return {k: _to_meta(v) for k, v in obj.items()}
    return obj


def _func_name(func: Any) -> str:
    return getattr(func, "__qualname__", None) or getattr(func, "__name__", None) or repr(func)


def propagate_meta(
    func: Any, args: Any, kwargs: Any, handles: list[Tensor], factory: bool
) -> tuple[Any, list[Any], list[Any]]:
    """Run ``func`` on meta tensors: ``(result_spec, leaves, templates)`` where ``templates``
    has one entry per tensor leaf of the result: ``(leaf_index, "new", shape, stride, dtype,
    storage_offset)`` or ``(leaf_index, "alias", i)`` (the leaf is the i-th input handle
    itself: an in-place op)."""
    margs = _to_meta(args)
    mkwargs = _to_meta(kwargs)
    if "device" in mkwargs:  # the client may have no such device: the metadata is the same
        mkwargs = {**mkwargs, "device": "meta"}
    try:
        if func in _MOVES:
            out = _move_meta(func, margs, mkwargs)
        elif factory:
            with torch.device("meta"):
                out = func(*margs, **mkwargs)
        else:
            out = func(*margs, **mkwargs)
    except NotImplementedError as exc:
        raise NotImplementedError(
            f"{_func_name(func)} cannot run on a monarch.Tensor: its output shape is not known without running it ({exc})"
        ) from exc
    leaves, spec = tree_flatten(out)
    # an op that returns one of its inputs (``add_``) names it; a remote function's results are
    # new tensors on the workers whatever its propagator returns
    fakes = {} if type(func) is _Remote else {id(h._fake): i for i, h in enumerate(handles)}
    templates: list[Any] = []
    for i, leaf in enumerate(leaves):
        if isinstance(leaf, torch.Tensor):
            j = fakes.get(id(leaf))
            if j is not None:
                templates.append((i, "alias", j))
            else:
                templates.append(
                    (
                        i,
                        "new",
                        tuple(leaf.shape),
                        tuple(leaf.stride()),
                        leaf.dtype,
                        leaf.storage_offset(),
                    )
                )
    return (spec, leaves, templates)


_MOVES = frozenset((torch.Tensor.to, torch.Tensor.cuda, torch.Tensor.cpu))


def _is_device(x: Any) -> bool:
    return isinstance(x, torch.device) or (type(x) is str and x.split(":")[0] in _DEVICE_TYPES)


_DEVICE_TYPES = frozenset(("cpu", "cuda", "meta"))


def _move_meta(func: Any, margs: Any, mkwargs: dict[str, Any]) -> Any:
    """The metadata of ``t.to(...)`` / ``t.cuda()`` / ``t.cpu()``: that of ``to`` without its
    device (the client may have no CUDA), always a new tensor (the result lives elsewhere)."""
    src = margs[0]
    if func is torch.Tensor.to:
        rest = [a for a in margs[1:] if not _is_device(a) and type(a) is not int]
        kw = {k: v for k, v in mkwargs.items() if k not in ("device", "non_blocking", "copy")}
        out = src.to(*rest, **kw)
    else:
        out = src
    if out is src:
        out = torch.empty_strided(tuple(src.shape), tuple(src.stride()), dtype=src.dtype, device="meta")
    return out


def _device_type(x: Any) -> str | None:
    if isinstance(x, torch.device):
        return x.type
    if type(x) is str and x.split(":")[0] in ("cpu", "cuda"):
        return x.split(":")[0]
    if type(x) is int:  # t.to(0): a CUDA device index
        return "cuda"
    return None


def out_device(func: Any, args: Any, kwargs: Any, handles: list[Tensor]) -> str:
    """Where an op's results live on the ranks: its ``device=``; for ``t.to(...)``, ``cuda()``
    and ``cpu()`` their target; else CUDA when an input handle is on CUDA (torch lets CPU
    scalars join CUDA tensors), the CPU otherwise (factories without ``device=`` included)."""
    d = _device_type(kwargs.get("device")) if kwargs else None
    if d is not None:
        return d
    if func is torch.Tensor.cuda:
        return "cuda"
    if func is torch.Tensor.cpu:
        return "cpu"
    if func is torch.Tensor.to:
        for a in args[1:]:
            if type(a) is Tensor:
                return a._dev
            d = _device_type(a)
            if d is not None:
                return d
    for h in handles:
        if h._dev == "cuda":
            return "cuda"
    return "cpu"


def dispatch(
    func: Any, args: Any, kwargs: Any, ambient: MeshClient | None, fid_key: Any = None
) -> Any:
    """Run ``func(*args, **kwargs)`` on the mesh of the handles in it (or ``ambient``'s).

    Returns:
        The result with every tensor replaced by a new handle (or the input handle itself for
        in-place ops); results with no tensor (``t.shape``, ``t.dim()``) come from the meta run,
        with nothing sent.

    Raises:
        ValueError: a local tensor is used inside ``activate()``, or tensors of two meshes mix.
    """
    w = _Walk()
    key: list[Any] = [func]
    wargs = _wire(args, w, key)
    wkwargs = _wire(kwargs, w, key)
    if w.meta and not w.handles and not w.plain:
        return func(*args, **kwargs)
    if w.plain:
        if ambient is not None or w.handles:
            raise ValueError(f"{_func_name(func)}: {_EXPLAIN_LOCAL}")
        return func(*args, **kwargs)
    client = w.client
    if ambient is not None:
        if client is None:
            client = ambient
        elif client is not ambient:
            raise ValueError(
                f"{_func_name(func)}: a tensor of another mesh is used inside {ambient!r}.activate()"
            )
    if client is None:  # not reached through our hooks
        return func(*args, **kwargs)
    factory = not w.handles
    if factory:
        key.append("factory")
    ckey = tuple(key) if w.hashable else _NOKEY
    hit = _cache.get(ckey) if ckey is not _NOKEY else None
    nested = torch._C._len_torch_function_stack() > 0
    if hit is None:
        if nested:
            with _bare():
                hit = propagate_meta(func, args, kwargs, w.handles, factory)
        else:
            hit = propagate_meta(func, args, kwargs, w.handles, factory)
        # the key holds the input handles' devices and the arguments: so is the result's
        hit = (*hit, out_device(func, args, kwargs, w.handles))
        if ckey is not _NOKEY:
            _cache[ckey] = hit
    spec, leaves, templates, dev = hit
    # metadata only (shape, dim(), dtype ...): answered here; a remote function with no tensor
    # result still runs on the workers, for its effects (Monarch's ``propagate=lambda: None``)
    if not templates and type(func) is not _Remote:
        return tree_unflatten(list(leaves), spec)
    placed = None
    if type(func) is not _Remote and any(h._placements is not None for h in w.handles):
        placed = _out_placements(func, args, kwargs, w.handles, leaves, templates)
    if dev != "cpu" and not client.cuda_checked:
        client.check_cuda()  # once per mesh: every rank has CUDA, or say so here
    if nested:
        with _bare():
            out = _emit(client, func, fid_key, w, wargs, wkwargs, spec, leaves, templates, dev)
    else:
        out = _emit(client, func, fid_key, w, wargs, wkwargs, spec, leaves, templates, dev)
    if placed is not None:
        results = [x for x in tree_flatten(out)[0] if type(x) is Tensor]
        for h, pls in zip(results, placed):
            h._placements = pls
    return out


def _out_placements(
    func: Any,
    args: Any,
    kwargs: Any,
    handles: list[Tensor],
    leaves: list[Any],
    templates: list[Any],
) -> list[Any]:
    """The placements of an op's results on placed handles (``_placement.propagate``); an
    in-place op must leave its input's placements as they were."""
    from .._core.errors import ShardingError
    from ._rules import propagate

    others = [x for x in tree_flatten((args, kwargs))[0] if not isinstance(x, torch.Tensor)]
    ins = [(tuple(h._fake.shape), h._placements) for h in handles]
    shapes = [tuple(leaves[t[0]].shape) for t in templates]
    first = args[0] if args else None
    out = propagate(
        func,
        ins,
        others,
        shapes,
        isinstance(first, torch.Tensor),
        call=(args, kwargs),
        sizes=handles[0]._client.sizes,
    )
    for t, pls in zip(templates, out):
        if t[1] == "alias" and handles[t[2]]._placements != pls:
            raise ShardingError(
                f"{_func_name(func)}: in place, it would change the placements of its input"
            )
    return out


def _emit(
    client: MeshClient,
    func: Any,
    fid_key: Any,
    w: _Walk,
    wargs: Any,
    wkwargs: Any,
    spec: Any,
    leaves: list[Any],
    templates: list[Any],
    dev: str = "cpu",
) -> Any:
    """Make the result handles and queue the command."""
    out_leaves = list(leaves)
    out_ids = []
    for t in templates:
        if t[1] == "alias":
            h = w.handles[t[2]]
            out_leaves[t[0]] = h
            out_ids.append(h._id)
        else:
            i = client.new_id()
            meta = torch.empty_strided(t[2], t[3], dtype=t[4], device="meta")
            if t[5]:
                meta = meta.as_strided(t[2], t[3], t[5])
            out_leaves[t[0]] = new_handle(meta, client, i, dev)
            out_ids.append(i)
    fid = client.fn_id(func if fid_key is None else fid_key)
    client.push((CALL, fid, tuple(out_ids), wargs, wkwargs))
    return tree_unflatten(out_leaves, spec)


def call_remote(
    fn: Callable[..., Any] | str,
    propagate: Callable[..., Any],
    args: Any,
    kwargs: Any,
    ambient: MeshClient | None,
) -> Any:
    """Run ``fn`` on every rank with handles as the ranks' local tensors; ``propagate`` gives the
    result's metadata (called with meta tensors on the client)."""
    from ._distribute import layouts_of

    layouts = layouts_of(args, kwargs)
    if layouts:  # the workers hand placed handles to ``fn`` as LocalShards
        from ._redistribute import PlacedFn, PlacedPropagate

        pfn = PlacedFn(fn)
        return dispatch(
            _Remote(pfn, PlacedPropagate(propagate)), (layouts, *args), kwargs, ambient, fid_key=pfn
        )
    return dispatch(_Remote(fn, propagate), args, kwargs, ambient, fid_key=fn)


class _Remote:
    """A remote function as ``dispatch`` sees it: called on the client with meta tensors it runs
    the propagator; on the workers the function itself runs (its id names ``fn``)."""

    __slots__ = ("fn", "propagate")

    def __init__(self, fn: Callable[..., Any] | str, propagate: Callable[..., Any]) -> None:
        self.fn = fn
        self.propagate = propagate

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.propagate(*args, **kwargs)

    def __hash__(self) -> int:
        return hash((self.fn, self.propagate))

    def __eq__(self, other: object) -> bool:
        return type(other) is _Remote and other.fn == self.fn and other.propagate == self.propagate


from . import _rref as _rref  # noqa: E402  # registers the actor-endpoint hooks (rref, handles to .call())
