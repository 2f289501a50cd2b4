"""ActorMesh: a (sliceable) reference to the actors of one spawn, and how adverbs reach them.

A cast goes straight to every proc that hosts a target rank when there are at most
``FANOUT`` such procs; beyond that it goes down a tree whose every node forwards to at most
``FANOUT`` procs and reduces the ``call()`` results of its subtree into one reply, so the
caller's cost grows with the fan-out, not with the mesh. When the procs span several hosts (TCP
addresses with different host parts) the tree is built per host: one head proc per host receives
the cast (each host boundary is crossed once), forwards it to the other procs of its host and
reduces their ``call()`` results into one reply per host; more than ``FANOUT`` hosts are
themselves arranged in a tree of heads. A ``broadcast`` takes the per-host tree as soon as a host
holds several targets (no reply waits on the extra hop, and a large payload crosses each host
boundary once); a ``call()``/``stream()`` to at most ``FANOUT`` procs is sent straight to them
(lower latency: the client gets at most ``FANOUT`` replies anyway). Sequence numbers are fixed
at the origin so per-sender FIFO order holds across direct sends and tree casts.

A forwarder that dies: within a host, the procs below it are told to skip the numbers that died
with it (the router's ``forwarded`` record). Across hosts (a head forwarding to other hosts'
heads) the origin keeps each cast in a :class:`~monarch._mesh.cast_ledger.CastLedger` and
re-sends it straight to the hosts below the lost one, so every healthy host gets it once.
Callers await the same ranks either way: a ``call()`` awaits each top head and each cross-host
forwarder for its whole subtree (its results are reduced there), so a lost forwarder fails the
call at once, naming its first rank; a ``stream()`` awaits every proc for its own ranks and the
ranks its host's procs below it hold, so only the lost host's positions fail.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from .._core.errors import SupervisionError
from .._core.future import Future
from .._core.shape import MeshTrait, Point, Shape
from .._transport.frame import Envelope, EnvelopeTemplate
from .._transport.messages import EXPLICIT_PORT_BIT, PICKLED_BIT, STREAM_BIT, Kind
from .._transport.pickle_codec import PICKLE_CODEC, dumps
from .actor import endpoint_table
from .cast_ledger import Edge, fill_hops, ledger_for
from .context import _current
from .current import current_runtime
from .endpoint import Endpoint, EndpointSpec
from .outgoing import TemplateMessage
from .sinks import OneSink, StreamSink, ValueMeshSink
from .stream import Stream

__all__ = ["FANOUT", "ActorMesh", "MeshRef", "decode_mesh_ref", "encode_mesh_ref"]

FANOUT = 8
T = TypeVar("T")


@dataclass(frozen=True)
class MeshRef:
    """Where the actors of one spawn live.

    Attributes:
        mesh_id: unique id of the spawn.
        name: the name given to ``spawn``.
        addrs: the address of the OS process hosting each spawn rank.
        shape: the shape of the spawn (dense over ranks ``0..n-1``).
        actor_cls: the actor class (None when unknown, e.g. generated meshes decoded remotely).
        owner: the address of the process that spawned it.
    """

    mesh_id: str
    name: str
    addrs: tuple[str, ...]
    shape: Shape
    actor_cls: Any
    owner: str


class _Plan:
    """What every cast to one slice needs, computed once per mesh object: the target ranks,
    grouped by the proc hosting them, their positions in the slice, and pre-encoded envelopes
    (one per endpoint, adverb kind and sender)."""

    __slots__ = (
        "_cast_tree", "_stream_expected", "_tree_expected", "broadcast_tree", "groups", "positions", "ranks",
        "templates", "tree",
    )

    def __init__(self, shape: Shape, addrs: Sequence[str]) -> None:
        self.ranks = shape.ranks()
        groups: dict[str, list[int]] = {}
        for r in self.ranks:
            groups.setdefault(addrs[r], []).append(r)
        pos = {r: i for i, r in enumerate(self.ranks)}
        self.groups = list(groups.items())
        self.positions = [(a, tuple(pos[r] for r in rs)) for a, rs in self.groups]
        self.templates: dict[tuple[Any, ...], list[tuple[str, EnvelopeTemplate, Any]]] = {}
        self._tree_expected: dict[str, set[int]] | None = None
        self._stream_expected: dict[str, set[int]] | None = None
        self._cast_tree: list[tuple[str, list[int], list[Any]]] | None = None
        hosts = len({_host_of(a) for a, _ in self.groups})
        # a tree when the origin would send more than FANOUT frames; a broadcast also when a
        # host holds several targets (its payload then crosses each host boundary once). A
        # call()/stream() to at most FANOUT procs goes straight to them: a head's forwarding hop
        # doubled a 2 hosts x 2 procs call() (598 vs 304 us, benchmarks/RESULTS.md)
        self.tree = len(self.groups) > FANOUT
        self.broadcast_tree = self.tree or 1 < hosts < len(self.groups)

    def cast_tree(self) -> list[tuple[str, list[int], list[Any]]]:
        """The cast tree over this slice's procs (see :func:`_cast_tree`), built once."""
        if self._cast_tree is None:
            self._cast_tree = _cast_tree(self.groups)
        return self._cast_tree

    def tree_expected(self) -> dict[str, set[int]]:
        """Positions whose results a ``call()`` down the tree awaits from each proc (a fresh
        copy): each top head and each proc that forwards to other hosts, for its subtree."""
        if self._tree_expected is None:
            pos = dict(self.positions)
            exp: dict[str, set[int]] = {}

            def walk(a: str, sub: list[Any], top: bool) -> set[int]:
                mine = set(pos[a])
                crosses = False
                for c, _rs, csub in sub:
                    mine |= walk(c, csub, False)
                    crosses = crosses or _host_of(c) != _host_of(a)
                if top or crosses:
                    exp[a] = mine
                return mine

            for a, _rs, sub in self.cast_tree():
                walk(a, sub, True)
            self._tree_expected = exp
        return {a: set(ps) for a, ps in self._tree_expected.items()}

    def stream_expected(self) -> dict[str, set[int]]:
        """Positions a ``stream()`` down the tree awaits from each proc (a fresh copy): its own
        and those of the procs below it on its host (they are skipped if it dies); the hosts
        below it get the cast again from the origin (the ledger), so they are not awaited here."""
        if self._stream_expected is None:
            pos = dict(self.positions)
            exp: dict[str, set[int]] = {}

            def walk(a: str, sub: list[Any]) -> set[int]:
                mine = set(pos[a])
                for c, _rs, csub in sub:
                    below = walk(c, csub)
                    if _host_of(c) == _host_of(a):
                        mine |= below
                exp[a] = mine
                return mine

            for a, _rs, sub in self.cast_tree():
                walk(a, sub)
            self._stream_expected = exp
        return {a: set(ps) for a, ps in self._stream_expected.items()}


def _shape_into(builder: Any, shape: Shape) -> None:
    s = builder.init("shape")
    s.labels = list(shape.labels)
    s.offset = shape.offset
    s.sizes = list(shape.sizes)
    s.strides = list(shape.strides)


class ActorMesh(MeshTrait, Generic[T]):
    """A mesh of actors: endpoints as attributes, mesh operations that return the same type.

    Created by ``ProcMesh.spawn``; can be sent to other actors (it pickles by reference).

    Typing: only declared endpoints type-check. A generated ``XMesh`` subclass declares its
    endpoints as ``Endpoint[P, R]`` descriptors, so ``trainers.nosuch`` is a type error. A plain
    Python actor's mesh is typed as the actor class itself (``spawn("c", Counter)`` is a
    ``Counter`` to mypy; see :class:`monarch.actor.Actor`), whose ``@endpoint`` attributes are
    ``Endpoint[P, R]``. At run time this class finds a plain actor's endpoints by name.
    """

    _is_actor_mesh = True

    def __init__(self, ref: MeshRef, shape: Shape | None = None) -> None:
        self._ref = ref
        self._shape = shape if shape is not None else ref.shape
        self._rr = itertools.count()
        self._cplan: _Plan | None = None

    def _new_with_shape(self, shape: Shape) -> Any:
        return type(self)(self._ref, shape)

    if not TYPE_CHECKING:
        # Hidden from type checkers: a visible ``__getattr__ -> Any`` would let every attribute of
        # every mesh type-check (``trainers.nosuch.call_one()``). Generated meshes declare their
        # endpoints as typed descriptors; a plain actor's mesh is typed as its actor class (see
        # ``monarch.actor.Actor``). At run time this finds a plain actor's endpoints by name.
        def __getattr__(self, name: str) -> Any:
            if name.startswith("_"):
                raise AttributeError(name)
            ref = self.__dict__.get("_ref")
            cls = ref.actor_cls if ref is not None else None
            if cls is not None:
                spec = _py_endpoints(cls).get(name)
                if spec is not None:
                    ep: Endpoint[Any, Any] = Endpoint(self, spec)
                    self.__dict__[name] = ep  # later lookups skip __getattr__
                    return ep
                if callable(getattr(cls, name, None)):
                    return NotAnEndpoint(self, name)
            raise AttributeError(
                f"{type(self).__name__} of {getattr(cls, '__qualname__', '?')} has no endpoint {name!r}"
            )

    def __repr__(self) -> str:
        ext = dict(zip(self._shape.labels, self._shape.sizes))
        return f"<{type(self).__name__} {self._ref.name!r} extent={ext}>"

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_mesh, (type(self), self._ref, self._shape))

    @property
    def name(self) -> str:
        return self._ref.name

    def _actor_name(self, pos: int) -> str:
        """Monarch's name of the actor at position ``pos`` of this slice:
        ``<module.Class name{'gpus': 1/4}>`` (``name[rank]`` when the class is unknown)."""
        ref = self._ref
        rank = self._shape.ranks()[pos]
        cls = ref.actor_cls
        if cls is None:
            return f"{ref.name}[{rank}]"
        return f"<{cls.__module__}.{cls.__qualname__} {ref.name}{Point(rank, ref.shape.extent)}>"

    # -- adverbs ---------------------------------------------------------------------------
    def _make_plan(self) -> _Plan:
        plan = _Plan(self._shape, self._ref.addrs)
        self._cplan = plan
        return plan

    def _invoke(self, spec: EndpointSpec, adverb: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if spec.signature is not None:
            spec.check_arguments(args, kwargs)
        plan = self._cplan or self._make_plan()
        ranks = plan.ranks
        if adverb == "call_one" and len(ranks) != 1:
            raise ValueError(
                f"call_one() needs a mesh of exactly one actor, but {self!r} has {len(ranks)}; "
                "slice it or use call()"
            )
        if adverb == "choose":
            if not ranks:
                raise ValueError(f"choose() on an empty mesh {self!r}")
            i = next(self._rr) % len(ranks)
            sub = _point_shape(self._shape, i)
            return ActorMesh(self._ref, sub)._invoke(spec, "call_one", args, kwargs)
        codec = spec.codec or PICKLE_CODEC
        payload, bufs = codec.encode_call(args, kwargs)
        rt = current_runtime()
        router = rt.router
        ref = self._ref
        call = _call_label(ref.name, spec.name)
        for a, rs in plan.groups:
            dead = router.dead_reason(a)
            if dead:
                raise SupervisionError.proc_failed(f"{ref.name}{rs if len(rs) > 1 else [rs[0]]}", dead, call)
            reason = rt.supervisor.unusable(ref, rs)
            if reason:
                raise SupervisionError(reason).for_call(call)
        result: Any = None
        sink: Any = None
        flags = 0  # MessageFlags bits as a plain int: it is part of a per-call cache key
        tree = plan.broadcast_tree if adverb == "broadcast" else plan.tree
        # replies come from the procs messaged directly: through a cast tree, from the head of
        # each subtree, so the death of a head fails every position below it (nobody hangs)
        if adverb == "broadcast":
            expected: dict[str, set[int]] = {}
        elif not tree:
            expected = {a: set(ps) for a, ps in plan.positions}
        elif adverb == "stream":
            # stream parts are not reduced: every proc answers the caller itself, so each one's
            # death fails its own positions and those of its host's procs it never forwarded to
            expected = plan.stream_expected()
        else:
            expected = plan.tree_expected()
        if adverb == "call_one":
            sink = OneSink(router, codec, expected)
            result = sink.future
        elif adverb == "call":
            sink = ValueMeshSink(router, codec, expected, self._shape)
            result = sink.future
        elif adverb == "stream":
            sink = StreamSink(router, codec, expected, len(ranks))
            result = Stream(sink, spec.timeout_s, None if spec.stream else len(ranks))
            flags |= STREAM_BIT
        elif adverb != "broadcast":
            raise ValueError(f"unknown adverb {adverb!r}")
        if spec.explicit_response_port:
            flags |= EXPLICIT_PORT_BIT
        if spec.extra and spec.extra.get("pickled"):  # an IDL endpoint's rref (monarch.tensor._rref)
            flags |= PICKLED_BIT
        if sink is not None:
            sink.call = call  # failures of this call read "Endpoint call mesh.endpoint() failed, ..."
            sink.mesh = self  # ... and name the actor: "The actor <mod.Class name{...}> ..."
        ctx = _current.get()
        sender = ctx.actor_instance.actor_id if ctx is not None else rt.name
        try:
            if not tree:
                key = (spec.name, flags, sink is not None, sender, codec.encoding, router.addr)
                templates = plan.templates.get(key)
                if templates is None:
                    templates = plan.templates[key] = self._templates(spec, flags, sink is not None, sender, codec, router)
                reply_port = sink.port if sink is not None else 0
                for a, tpl, base in templates:
                    router.send(a, TemplateMessage(tpl, base, reply_port, payload), bufs)
            else:
                env = self._envelope(spec, flags, sender, codec, router)
                env.payload = payload
                if sink is not None:
                    env.replyAddr = router.addr
                    env.replyPort = sink.port
                pending: Any = None
                if isinstance(sink, ValueMeshSink):
                    pending = _not_done(sink.future)
                elif isinstance(sink, StreamSink):
                    pending = _streaming(sink)
                _send_tree(router, env, bufs, plan, pending)
        except Exception as exc:
            if sink is not None:
                router.close_port(sink.port)
            if isinstance(exc, SupervisionError):
                raise exc.for_call(call) from exc
            raise SupervisionError(f"cannot reach actor mesh {ref.name!r}: {exc}").for_call(call) from exc
        timeout_s = spec.timeout_s
        if timeout_s is not None and sink is not None and hasattr(sink, "timeout"):
            router.loop.call_soon_threadsafe(router.loop.call_later, timeout_s, sink.timeout, timeout_s)
        return result

    def _envelope(self, spec: EndpointSpec, flags: int, sender: str, codec: Any, router: Any) -> Any:
        """The fields every call of ``spec`` to this slice shares."""
        env = Envelope.new_message()
        env.kind = Kind.CALL
        env.origin = router.addr
        env.actor = self._ref.mesh_id
        env.endpoint = spec.name
        env.encoding = codec.encoding
        env.flags = flags
        env.sender = sender
        _shape_into(env, self._shape)
        return env

    def _templates(
        self, spec: EndpointSpec, flags: int, reply: bool, sender: str, codec: Any, router: Any
    ) -> list[tuple[str, EnvelopeTemplate, Any]]:
        out = []
        for a, rs in self._cplan.groups:  # type: ignore[union-attr]  # made by _invoke first
            env = self._envelope(spec, flags, sender, codec, router)
            if reply:
                env.replyAddr = router.addr
            env.ranks = rs
            out.append((a, EnvelopeTemplate(env), env))
        return out

    # -- lifecycle ---------------------------------------------------------------------------
    def stop(self) -> Future[None]:
        """Stop every actor of the spawn: queued messages are handled, then ``__cleanup__`` runs.

        Later calls raise ``SupervisionError``. The future completes when all have stopped.
        """
        return current_runtime().stop_actor_mesh(self._ref)

    async def __aenter__(self) -> ActorMesh[T]:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()

    @property
    def initialized(self) -> Future[None]:
        """Completes once every actor of this mesh has run ``__init__`` (Monarch's ``initialized``).

        It asks every actor through the mesh's ordinary message path, which each actor handles
        after ``__init__``: an actor whose ``__init__`` raised fails the future with
        ``SupervisionError``, as every later call does.
        """
        return current_runtime().actors_initialized(self._ref, self._shape)


class NotAnEndpoint:
    """A plain method of the actor class seen through a mesh; wrap it with ``as_endpoint``."""

    def __init__(self, mesh: ActorMesh[Any], name: str) -> None:
        self._mesh = mesh
        self._name = name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(
            f"{self._name!r} is not an endpoint; mark it @endpoint or use as_endpoint(mesh.{self._name})"
        )


_PY_ENDPOINTS: dict[type, dict[str, EndpointSpec]] = {}


def _py_endpoints(cls: type) -> dict[str, EndpointSpec]:
    table = _PY_ENDPOINTS.get(cls)
    if table is None:
        table = {attr: spec for spec, attr in endpoint_table(cls).by_name.values()}
        _PY_ENDPOINTS[cls] = table
    return table


def _point_shape(shape: Shape, i: int) -> Shape:
    r = shape.ranks()[i]
    return Shape(list(shape.labels), r, [1] * len(shape.labels), list(shape.strides))


def _not_done(future: Future[Any]) -> Any:
    return lambda: not future.done()


def _streaming(sink: StreamSink) -> Any:
    return lambda: sink.remaining > 0


def _send_tree(router: Any, env: Any, bufs: list[Any], plan: _Plan, pending: Any) -> None:
    """Send ``env`` down the cast tree of ``plan``; ``pending``: whether its caller still awaits
    results (None for a broadcast), which bounds how long the ledger keeps it."""
    tree = plan.cast_tree()
    seqs = {a: router.next_seq(a) for a, _ in plan.groups}
    edges: list[Edge] = []

    def walk(hops: list[Any], path: list[str]) -> None:
        for a, rs, sub in hops:
            host = _host_of(a)
            if path:
                if _host_of(path[-1]) != host:
                    edges.append((path[-1], a, rs, sub))
                for fwd in path:
                    # a forwarder on this proc's host: if it dies, this proc is told to skip the
                    # number instead of waiting for it forever (one on another host: the ledger
                    # re-sends to this proc's host instead)
                    if _host_of(fwd) == host:
                        router.forwarded(fwd, a, seqs[a])
            walk(sub, [*path, a])

    walk(tree, [])
    env.origin = router.addr
    rec = None
    ledger = None
    if edges:
        ledger = ledger_for(router)
        rec = ledger.add(env.copy(), bufs, seqs, edges, pending)
    try:
        for a, rs, sub in tree:
            env.ranks = rs
            if sub:
                fill_hops(env.init("forward", len(sub)), sub, seqs)
            else:
                env.init("forward", 0)
            router.send(a, env, bufs, seq=seqs[a])
    finally:
        if ledger is not None:
            ledger.sent(rec)


def _build_tree(lst: Sequence[tuple[str, list[int]]]) -> list[tuple[str, list[int], list[Any]]]:
    """Split ``lst`` into at most FANOUT subtrees; the head of each forwards to the rest."""
    n = len(lst)
    if n == 0:
        return []
    per = -(-n // FANOUT)
    out = []
    for k in range(0, n, per):
        chunk = lst[k : k + per]
        head, rest = chunk[0], chunk[1:]
        out.append((head[0], head[1], _build_tree(rest)))
    return out


def _host_of(addr: str) -> str:
    """The host part of a proc address (``tcp:HOST:PORT`` -> ``HOST``); ``""`` for this machine's
    Unix and in-memory addresses."""
    if addr.startswith("tcp:"):
        return addr[4:].rsplit(":", 1)[0]
    return ""


def _cast_tree(lst: Sequence[tuple[str, list[int]]]) -> list[tuple[str, list[int], list[Any]]]:
    """The cast tree over ``lst`` ((proc address, ranks), in rank order): :func:`_build_tree` on
    one host; over several, one head per host (its first proc) whose children are the tree of its
    host's other procs plus, beyond ``FANOUT`` hosts, the heads of the hosts below it."""
    by_host: dict[str, list[tuple[str, list[int]]]] = {}
    for item in lst:
        by_host.setdefault(_host_of(item[0]), []).append(item)
    if len(by_host) <= 1:
        return _build_tree(lst)
    heads = [(procs[0][0], procs[0][1], _build_tree(procs[1:])) for procs in by_host.values()]
    return _tree_of_heads(heads)


def _tree_of_heads(heads: list[tuple[str, list[int], list[Any]]]) -> list[tuple[str, list[int], list[Any]]]:
    """At most FANOUT subtrees of host heads; the first head of each also forwards to the rest."""
    n = len(heads)
    if n == 0:
        return []
    per = -(-n // FANOUT)
    out = []
    for k in range(0, n, per):
        (a, rs, local), rest = heads[k], heads[k + 1 : k + per]
        out.append((a, rs, [*local, *_tree_of_heads(rest)]))
    return out


@functools.lru_cache(maxsize=4096)
def _call_label(mesh_name: str, endpoint: str) -> str:
    """``mesh.endpoint``, as failures of a call name it (cached: built once per pair)."""
    return f"{mesh_name}.{endpoint}"


def _rebuild_mesh(cls: type, ref: MeshRef, shape: Shape) -> Any:
    return cls(ref, shape)


def encode_mesh_ref(mesh: ActorMesh[Any]) -> bytes:
    """Bytes that identify ``mesh`` (its spawn and slice); for ``M.ActorRef`` fields.

    The implementation class is left out: the receiver names the mesh class it expects (the
    generated proxy) and must not need the sender's implementation module.
    """
    data, bufs = dumps((dataclasses.replace(mesh._ref, actor_cls=None), mesh._shape))
    if bufs:
        raise TypeError("mesh reference holds out-of-band data")
    return data


def decode_mesh_ref(data: bytes | memoryview, mesh_cls: type) -> Any:
    """The mesh proxy of class ``mesh_cls`` for bytes made by :func:`encode_mesh_ref`."""
    ref, shape = pickle.loads(data)
    return mesh_cls(ref, shape)
