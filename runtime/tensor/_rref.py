"""Actor endpoints and tensor handles: ``ep.rref(*args)`` (Monarch's ``Endpoint.rref``) and
handles passed to ``call`` / ``call_one`` / ``broadcast``.

The hand-off between the TensorWorker and an actor on the same proc (two actors, two threads,
one process) is a numbered SYNC point in the op stream:

1. The client queues ``(SYNC, seq, ranks, out_ids)`` after the ops issued so far, flushes, and
   then sends the endpoint message, whose arguments are wrapped in ``_CallArgs`` carrying
   ``(token, seq, mode, out_ids)``; handles in them pickle as ``(token, id)`` references.
2. The worker of each rank in ``ranks`` runs the ops before the SYNC, sets its store's
   ``reached = seq`` and blocks until the actor reports ``seq`` done (at most the collective
   timeout; the outputs are then poisoned).
3. The actor's thread decodes the message: ``_begin`` (unpickled before the arguments) finds
   the store of this proc by token (``_store.LOCAL``) and waits for ``reached >= seq``; each
   handle then becomes the rank's local tensor, read from the store directly. The endpoint
   runs (``endpoint._tensor_call`` hands it the pending call); an ``rref`` stores the tensors
   it returns under ``out_ids``, then the actor signals ``done`` and the worker goes on.

So an rref sees every op issued before it, and ops issued after it see its results and any
in-place change it made. A failure poisons the outputs like a failing op. Only synchronous
endpoints of sync (non-async) actors take part: their messages are decoded on the actor's own
thread, where waiting is allowed.
"""

from __future__ import annotations

import dataclasses
import inspect as _inspect
import pickle
import threading
from typing import Any

import torch
from torch.utils._pytree import tree_flatten, tree_unflatten

from .._core.errors import ActorError
from .._core.future import loop_thread_marker
from .._mesh import endpoint as _endpoint
from .._mesh.endpoint import EndpointSpec
from ._errors import TensorOpError
from ._store import LOCAL, TensorStore
from ._tensor import Tensor, _bare, active_client, new_handle
from ._wire import SYNC, Poison

_sending = threading.local()  # client side: set while a message with handles is encoded


# -- client side ----------------------------------------------------------------------------


def _to_meta(obj: Any) -> Any:
    leaves, spec = tree_flatten(obj)
    return tree_unflatten([x._fake if type(x) is Tensor else x for x in leaves], spec)


def _client_of(obj: Any) -> Any:
    client = active_client()
    for x in tree_flatten(obj)[0]:
        if type(x) is Tensor:
            if client is None:
                client = x._client
            elif x._client is not client:
                raise ValueError(f"a handle of another mesh is passed to an actor: {x!r}")
    return client


def _ranks(mesh: Any) -> list[int]:
    plan = mesh._cplan or mesh._make_plan()
    return list(plan.ranks)


def rref(mesh: Any, spec: EndpointSpec, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Run ``spec``'s endpoint on every actor of ``mesh`` at this point of the op stream, on the
    ranks' local tensors; return handles to the tensors it returns (see the module docstring)."""
    if spec.codec is not None:
        return _rref_idl(mesh, spec, args, kwargs)
    if spec.stream or spec.explicit_response_port:
        raise ValueError(
            f"rref() of {spec.qualname or spec.name}: streaming and explicit-port endpoints cannot return a tensor"
        )
    client = _client_of((args, kwargs))
    if client is None:
        raise ValueError(
            "rref() needs an active mesh (`with procs.activate():`) or a monarch.Tensor argument"
        )
    spec.check_arguments(args, kwargs)
    prop = spec.extra.get("propagate")
    if prop is None:
        raise ValueError(
            f"rref() of {spec.qualname or spec.name}: the result's shape is not known; declare it with "
            "@endpoint(propagate=fn) (fn takes the endpoint's arguments as meta tensors and returns "
            "tensors shaped like its result) or propagate='inspect' (no tensor result)"
        )
    out_ids: tuple[int, ...] = ()
    result: Any = None
    if prop != "inspect":
        with _bare(), torch.device("meta"):
            fake = prop(*_to_meta(args), **_to_meta(kwargs))
        leaves, tspec = tree_flatten(fake)
        outs: list[Any] = []
        ids = []
        dev = _args_device((args, kwargs))
        for leaf in leaves:
            if isinstance(leaf, torch.Tensor):
                with _bare():
                    meta = torch.empty_strided(
                        tuple(leaf.shape), tuple(leaf.stride()), dtype=leaf.dtype, device="meta"
                    )
                h = new_handle(meta, client, client.new_id(), dev)
                ids.append(h._id)
                outs.append(h)
            else:
                outs.append(leaf)
        out_ids = tuple(ids)
        result = tree_unflatten(outs, tspec)
    _send(client, mesh, spec, "call", args, kwargs, "rref", out_ids)
    return result


# IDL ($M.rref) endpoints: the result's metadata by endpoint and argument metadata, learnt from
# the first call (Monarch's "cached" propagation); and each endpoint's pickle-coded twin
_idl_meta: dict[Any, tuple[tuple[int, ...], tuple[int, ...], torch.dtype]] = {}
_pickled: dict[tuple[int, bool], EndpointSpec] = {}
_IDL_META_MAX = 4096


def _rref_idl(mesh: Any, spec: EndpointSpec, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``rref`` of a generated (IDL) endpoint marked ``$M.rref``: its one result is a tensor.

    The call travels pickle-coded (the ``PICKLED`` message flag), as its arguments carry the
    SYNC point; the schema's struct is not used for it. The schema gives no shape, so the first
    call with given argument metadata waits until the ranks report the result's shape, stride
    and dtype (they must agree), and later calls reuse it without waiting.
    """
    name = spec.qualname or spec.name
    if not spec.extra.get("rref"):
        raise TypeError(
            f"rref() of {name}: the schema does not mark this endpoint $M.rref (it must return one tensor)"
        )
    client = _client_of((args, kwargs))
    if client is None:
        raise ValueError(
            "rref() needs an active mesh (`with procs.activate():`) or a monarch.Tensor argument"
        )
    spec.check_arguments(args, kwargs)
    twin = _pickled_twin(spec)
    key = _meta_key(spec, args, kwargs)
    meta = _idl_meta.get(key) if key is not None else None
    oid = client.new_id()
    fut = _send(client, mesh, twin, "call", args, kwargs, "rref_meta", (oid,))
    if meta is None:
        reported = [m for m in fut.get(client.timeout_s).values() if m is not None]
        if not reported:  # the endpoint failed on every rank: raise rank 0's error
            try:
                client.fetch([oid], {}).get(client.timeout_s)
            except ActorError as exc:
                if isinstance(exc.exception, TensorOpError):
                    raise exc.exception from None
                raise
            finally:
                client.deletes.append(oid)  # sent with the next batch, after the fetch
            raise TensorOpError({}, name, "RuntimeError: no rank reported a result", "")
        if any(m != reported[0] for m in reported):
            client.deletes.append(oid)
            raise ValueError(f"rref() of {name}: the ranks returned tensors of different shapes or dtypes: {sorted(set(reported))}")
        shape, stride, dtype_name = reported[0]
        meta = (tuple(shape), tuple(stride), getattr(torch, dtype_name))
        if key is not None:
            if len(_idl_meta) >= _IDL_META_MAX:  # bounded: arguments may never repeat
                _idl_meta.clear()
            _idl_meta[key] = meta
    with _bare():
        fake = torch.empty_strided(meta[0], meta[1], dtype=meta[2], device="meta")
    return new_handle(fake, client, oid, _args_device((args, kwargs)))


def _args_device(obj: Any) -> str:
    """Where an endpoint's results are taken to live: on CUDA when a handle argument is (the
    schema and ``propagate`` say nothing of devices)."""
    for x in tree_flatten(obj)[0]:
        if type(x) is Tensor and x._dev == "cuda":
            return "cuda"
    return "cpu"


def _meta_key(spec: EndpointSpec, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """The cache key of an IDL rref's result metadata: the endpoint, its plain arguments and
    its handles' metadata (None: an argument is not hashable, so nothing is cached)."""
    leaves, tspec = tree_flatten((args, kwargs))
    parts: list[Any] = [id(spec), str(tspec)]
    for x in leaves:
        if type(x) is Tensor:
            f = x._fake
            parts.append(("handle", tuple(f.shape), tuple(f.stride()), f.dtype))
        elif isinstance(x, torch.Tensor):
            return None
        else:
            parts.append(x)
    key = tuple(parts)
    try:
        hash(key)
    except TypeError:
        return None
    return key


def invoke(
    mesh: Any, spec: EndpointSpec, adverb: str, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """``mesh._invoke`` for a call whose arguments may hold handles (they arrive as the ranks'
    local tensors, at this point of the op stream)."""
    if spec.codec is not None:
        if not _idl_has_handle((*args, *kwargs.values()), 0):
            return mesh._invoke(spec, adverb, args, kwargs)
        return _send_idl(mesh, spec, adverb, args, kwargs)
    if not _has_handle(args, kwargs):
        return mesh._invoke(spec, adverb, args, kwargs)
    client = _client_of((args, kwargs))
    return _send(client, mesh, spec, adverb, args, kwargs, "call", ())


# -- IDL endpoints given handles --------------------------------------------------------------
#
# The call is encoded with the schema's own structs (so the schema checks every value at the
# call site), except that an ``M.Tensor`` field given a handle writes the handle's metadata and
# leaves the handle itself among the out-of-band buffers (``_idl._types.TENSOR_REFS``). Payload
# and buffers travel pickle-coded (the ``PICKLED`` flag, as an IDL rref does), so that the
# handles pickle as references and the message carries its SYNC point; the actor decodes the
# payload with the endpoint's codec, the buffers holding its rank's local tensors, and its result
# goes back encoded with the codec too, to be decoded on the client as any IDL reply is.

_reply_codecs: dict[int, Any] = {}  # id(codec) -> codec, of the IDL endpoints called with handles
_codecs_by_impl: dict[tuple[type, str], Any] = {}  # (actor class, method name) -> its IDL codec


def _handle_metadata(h: Tensor) -> tuple[str, list[int], list[int]]:
    f = h._fake
    return str(f.dtype).removeprefix("torch."), list(f.shape), list(f.stride())


_PLAIN = frozenset((int, float, str, bool, bytes, bytearray, memoryview, type(None)))


def _idl_has_handle(values: Any, depth: int) -> bool:
    """A handle among IDL arguments: in lists, or in the fields of structs built by the caller
    (``Batch(inputs=t)``; a received struct holds none). Schema lists are homogeneous: a list
    is walked only when its first element is a struct."""
    if depth > 8:
        return False
    for v in values:
        t = type(v)
        if t in _PLAIN:
            continue
        if t is Tensor:
            return True
        if t is list or t is tuple:
            if v and (type(v[0]) is Tensor or _is_built_struct(v[0])) and _idl_has_handle(v, depth + 1):
                return True
        elif _is_built_struct(v) and _idl_has_handle(v._values.values(), depth + 1):
            return True
    return False


def _is_built_struct(v: Any) -> bool:
    return getattr(type(v), "__capnp__", None) is not None and v._reader is None


def _register_refs() -> None:
    from .._idl._types import TENSOR_REFS

    TENSOR_REFS[Tensor] = _handle_metadata


def _send_idl(mesh: Any, spec: EndpointSpec, adverb: str, args: Any, kwargs: Any) -> Any:
    """A call of an IDL endpoint whose arguments hold handles (see above)."""
    name = spec.qualname or spec.name
    if spec.stream or spec.explicit_response_port:
        raise TypeError(
            f"{name}: monarch.Tensor arguments need an endpoint that returns its result "
            "(not $M.stream or $M.explicitResponsePort)"
        )
    spec.check_arguments(args, kwargs)
    _register_refs()
    codec = spec.codec
    assert codec is not None
    payload, bufs = codec.encode_call(args, kwargs)  # before the SYNC: a refused value sends nothing
    handles = [b for b in bufs if type(b) is Tensor]
    if not handles:  # the handles were in no M.Tensor field (a plain argument holds them)
        raise TypeError(f"{name}: a monarch.Tensor handle can only fill an M.Tensor field")
    client = active_client()
    for h in handles:
        if client is None:
            client = h._client
        elif h._client is not client:
            raise ValueError(f"a handle of another mesh is passed to an actor: {h!r}")
    _reply_codecs[id(codec)] = codec
    twin = _pickled_twin(spec, encoded=True)
    return _send(client, mesh, twin, adverb, (_IdlCall(id(codec), payload, bufs),), {}, "call", ())


def _pickled_twin(spec: EndpointSpec, encoded: bool = False) -> EndpointSpec:
    """``spec`` pickle-coded (the ``PICKLED`` flag); ``encoded``: its one argument is an
    ``_IdlCall`` (the schema's signature was checked already)."""
    key = (id(spec), encoded)
    twin = _pickled.get(key)
    if twin is None:
        twin = dataclasses.replace(spec, codec=None, extra={**spec.extra, "pickled": True})
        if encoded:
            twin.signature = None
        _pickled[key] = twin
    return twin


class _IdlCall:
    """An IDL call's encoded parameters; its handles among the buffers (actor side: local tensors)."""

    __slots__ = ("buffers", "codec_key", "payload")

    def __init__(self, codec_key: int, payload: Any, buffers: list[Any]) -> None:
        self.codec_key = codec_key
        self.payload = payload
        self.buffers = buffers

    def __reduce_ex__(self, protocol: Any) -> tuple[Any, ...]:
        return (_IdlCall, (self.codec_key, _oob(self.payload), [_oob(b) for b in self.buffers]))


class _IdlReply:
    """An IDL endpoint's result encoded by its codec; unpickled on the client, decoded by it."""

    __slots__ = ("buffers", "codec_key", "payload")

    def __init__(self, codec_key: int, payload: Any, buffers: list[Any]) -> None:
        self.codec_key = codec_key
        self.payload = payload
        self.buffers = buffers

    def __reduce_ex__(self, protocol: Any) -> tuple[Any, ...]:
        return (_decode_reply, (self.codec_key, _oob(self.payload), [_oob(b) for b in self.buffers]))


def _oob(b: Any) -> Any:
    """Large byte buffers travel out of band (pickle 5), small ones and handles as they are."""
    if type(b) is Tensor or (isinstance(b, bytes | bytearray) and len(b) < 65536):
        return b
    return pickle.PickleBuffer(b)


def _decode_reply(codec_key: int, payload: Any, buffers: list[Any]) -> Any:
    codec = _reply_codecs.get(codec_key)
    if codec is None:
        raise RuntimeError("the reply of an IDL call with monarch.Tensor arguments reached a process that did not call")
    return codec.decode_result(memoryview(payload), [memoryview(b) for b in buffers])


def _codec_of(method: Any) -> Any:
    """The IDL codec of the endpoint that ``method`` (bound, on an actor) implements."""
    key = (type(method.__self__), method.__name__)
    codec = _codecs_by_impl.get(key)
    if codec is None:
        for klass in key[0].__mro__:
            spec = getattr(klass.__dict__.get(key[1]), "__monarch_endpoint__", None)
            if spec is not None and spec.codec is not None:
                codec = _codecs_by_impl[key] = spec.codec
                break
        else:
            raise TypeError(f"{key[0].__qualname__}.{key[1]} implements no IDL endpoint")
    return codec


def _send(
    client: Any,
    mesh: Any,
    spec: EndpointSpec,
    adverb: str,
    args: Any,
    kwargs: Any,
    mode: str,
    out_ids: tuple[int, ...],
) -> Any:
    seq = client.new_seq()
    client.push((SYNC, seq, _ranks(mesh), out_ids))
    client.flush()
    _sending.token = client.token
    try:
        return mesh._invoke(
            spec, adverb, _CallArgs(args, (client.token, seq, mode, out_ids)), kwargs
        )
    finally:
        _sending.token = None


def _has_handle(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    for v in (*args, *kwargs.values()):
        t = type(v)
        if t is Tensor:
            return True
        if (t is list or t is tuple or t is dict) and any(
            type(x) is Tensor for x in tree_flatten(v)[0]
        ):
            return True
    return False


def reduce_handle(h: Tensor) -> tuple[Any, ...]:
    """How a handle pickles: a reference the receiving actor resolves to its rank's tensor."""
    if getattr(_sending, "token", None) != h._client.token:
        raise TypeError(
            f"{h!r} can only be sent as an argument of an actor endpoint (call, call_one, broadcast, rref); "
            "fetch it with monarch.fetch_shard to send its values"
        )
    return (_local, (h._client.token, h._id))


class _CallArgs(tuple):  # type: ignore[type-arg]
    """An endpoint's positional arguments with the SYNC point they belong to."""

    info: tuple[str, int, str, tuple[int, ...]]

    def __new__(
        cls, args: tuple[Any, ...], info: tuple[str, int, str, tuple[int, ...]]
    ) -> _CallArgs:
        self = super().__new__(cls, args)
        self.info = info
        return self

    def __reduce_ex__(self, protocol: Any) -> tuple[Any, ...]:
        # _Begin is unpickled (and _begin runs) before the arguments: they find their store
        return (_args, (_Begin(self.info), tuple(self)))


class _Begin:
    __slots__ = ("info",)

    def __init__(self, info: tuple[str, int, str, tuple[int, ...]]) -> None:
        self.info = info

    def __reduce__(self) -> tuple[Any, ...]:
        return (_begin, self.info)


# -- actor side -----------------------------------------------------------------------------


class _Pending:
    """An actor call at a SYNC point, between its decoding and the end of its endpoint."""

    __slots__ = ("error", "mode", "out_ids", "seq", "store", "thread")

    def __init__(self, store: TensorStore, seq: int, mode: str, out_ids: tuple[int, ...]) -> None:
        self.store = store
        self.seq = seq
        self.mode = mode
        self.out_ids = out_ids
        self.error: Poison | None = None
        self.thread = threading.get_ident()

    def run(self, method: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Run the endpoint (``endpoint._tensor_call`` calls this in place of it)."""
        store = self.store
        name = getattr(method, "__qualname__", repr(method))
        try:
            if self.error is not None:
                self._poison_outs(self.error)
                e = self.error
                raise TensorOpError(e.rank, e.op, e.error, e.traceback)
            idl = args[0] if len(args) == 1 and type(args[0]) is _IdlCall else None
            try:
                if idl is not None:  # decoded here, with the rank's local tensors among its buffers
                    codec = _codec_of(method)
                    args, kwargs = codec.decode_call(memoryview(idl.payload), idl.buffers)
                if store.device is not None:  # the rank's GPU: device="cuda" there means it
                    with torch.cuda.device(store.device):
                        result = method(*args, **kwargs)
                else:
                    result = method(*args, **kwargs)
                if _inspect.isawaitable(result):
                    if hasattr(result, "close"):
                        result.close()
                    raise TypeError(
                        f"{name}: rref and monarch.Tensor arguments need a synchronous (def) endpoint"
                    )
            except TensorOpError:
                if self.mode == "rref_meta":
                    return None  # poisoned: no metadata from this rank
                raise
            except Exception as exc:
                self._poison_outs(store.poison(name, exc))
                if self.mode == "rref_meta":
                    return None
                raise
            if self.mode == "call":
                if idl is not None:
                    return _IdlReply(idl.codec_key, *codec.encode_result(result))
                return result
            leaves = [x for x in tree_flatten(result)[0] if isinstance(x, torch.Tensor)]
            if len(leaves) != len(self.out_ids):
                err = RuntimeError(
                    f"{name} returned {len(leaves)} tensors here, its propagate said {len(self.out_ids)}"
                )
                self._poison_outs(store.poison(name, err))
                raise err
            for i, t in zip(self.out_ids, leaves):
                store.put(i, t)
            if self.mode == "rref_meta":  # the client learns the result's metadata from it
                t = leaves[0]
                return (tuple(t.shape), tuple(t.stride()), str(t.dtype).removeprefix("torch."))
            return None
        finally:
            store.signal_done(self.seq)

    def _poison_outs(self, p: Poison) -> None:
        for i in self.out_ids:
            self.store.put(i, p)


def _begin(token: str, seq: int, mode: str, out_ids: tuple[int, ...]) -> _Pending:
    if getattr(loop_thread_marker, "active", False):
        raise TypeError(
            "rref and monarch.Tensor arguments need an endpoint of a sync (non-async) actor"
        )
    store = LOCAL.get(token)
    if store is None:
        raise ValueError(
            "a monarch.Tensor call reached an actor on a proc that is not in the activated mesh"
        )
    if not store.wait_reached(seq):
        raise TimeoutError(
            f"the tensor worker of this proc did not reach this call within {store.timeout_s} s"
        )
    p = _Pending(store, seq, mode, out_ids)
    _endpoint._tensor_call.pending = p
    _endpoint.TENSOR_CALLS_SEEN[0] = True
    return p


def _args(begin: _Pending, args: tuple[Any, ...]) -> tuple[Any, ...]:
    return args


def _local(token: str, id: int) -> Any:
    p: _Pending | None = getattr(_endpoint._tensor_call, "pending", None)
    if p is None or p.thread != threading.get_ident():
        raise ValueError("a monarch.Tensor reference arrived outside a tensor call")
    v = p.store.get(id)
    if v is None:
        v = Poison(
            p.store._rank, "lookup", f"KeyError: tensor {id} is not on this worker (deleted?)", ""
        )
    if type(v) is Poison:
        if p.error is None:
            p.error = v
        return None
    return v


_endpoint.set_tensor_hooks(rref, invoke)
