"""Result sinks: where replies to a port of this process go, and the futures they complete.

A sink is registered with the router under a port id; replies (``Part`` lists) for that port are
delivered to it on the loop thread. Each sink knows which peers it still awaits results from, so
that the death of a peer fails exactly the results it owed (rank-scoped failures).
"""

from __future__ import annotations

import collections
import threading
from typing import TYPE_CHECKING, Any, TypeVar

from .._core.errors import ActorError, CallTimeout, SupervisionError
from .._core.future import Future
from .._core.shape import Shape
from .._core.value_mesh import ValueMesh
from .._transport.codec import Codec
from .._transport.messages import END_OF_STREAM_BIT
from .._transport.pickle_codec import PICKLE_CODEC
from .router import Sink
from .wire_errors import decode_error

if TYPE_CHECKING:
    from .router import Router

__all__ = ["OneSink", "ReceiverSink", "StreamSink", "ValueMeshSink"]

R = TypeVar("R")


def _parts(env: Any, bufs: list[memoryview]) -> list[tuple[int, bool, Any, list[memoryview], bool, bool]]:
    """Split a reply into ``(position, is_error, payload, buffers, last, has_value)``."""
    payload = env.payload
    out = []
    off = 0
    bi = 0
    no_value = bool(env.flags & END_OF_STREAM_BIT)
    for p in env.parts:
        n, nb = p.length, p.buffers
        out.append((p.rank, p.error, payload[off : off + n], bufs[bi : bi + nb], p.last, not no_value))
        off += n
        bi += nb
    return out


def _decode(codec: Codec, err: bool, payload: Any, bufs: list[memoryview]) -> tuple[bool, Any]:
    if err:
        return False, decode_error(payload, bufs)
    try:
        return True, codec.decode_result(memoryview(payload), bufs)
    except Exception as exc:
        return False, exc
    except BaseException as exc:  # a hostile __reduce__ raising SystemExit must not end the loop
        return False, ActorError(RuntimeError(f"undecodable result: {type(exc).__name__}: {exc}"))


def _proc_lost(sink: Any, addr: str, positions: set[int], reason: str) -> SupervisionError:
    """What a caller owed results at ``positions`` by the proc at ``addr`` raises when that
    proc ends: it names the first of those actors as Monarch does (``<mod.Class name{...}>``)
    when the sink knows the mesh it called, else the proc."""
    mesh = sink.mesh
    actor = mesh._actor_name(min(positions)) if mesh is not None and positions else f"on proc {addr}"
    return SupervisionError.proc_failed(actor, reason, sink.call)


class _AwaitingSink(Sink):
    """Common bookkeeping: which peers results are awaited from, so peer loss fails them.

    ``call`` (``mesh.endpoint``) and ``mesh`` (the ActorMesh called), set by whoever sends the
    call, name the call and the actors in the errors.
    """

    call = ""
    mesh: Any = None

    def __init__(self, router: Router, codec: Codec, expected: dict[str, set[int]]) -> None:
        self.router = router
        self.codec = codec
        self.expected = expected
        self.lock = threading.Lock()
        self.port = router.new_port(self)

    def waits_on(self, addr: str) -> bool:
        return bool(self.expected.get(addr))

    def _got(self, pos: int) -> None:
        for s in self.expected.values():
            s.discard(pos)


class OneSink(_AwaitingSink):
    """One result for one future (``call_one``, ``choose``, stop acknowledgements)."""

    call = ""

    def __init__(self, router: Router, codec: Codec, expected: dict[str, set[int]]) -> None:
        # no lock: one result completes it, and the Future is the synchronisation
        self.router = router
        self.codec = codec
        self.expected = expected
        self.future: Future[Any] = Future()
        self.port = router.new_port(self)

    def deliver(self, env: Any, bufs: list[memoryview]) -> None:
        parts = env.parts
        if not parts:
            return
        p = parts[0]
        payload = env.payload
        if len(parts) > 1 or p.length != len(payload) or p.buffers != len(bufs):
            payload, bufs = payload[: p.length], bufs[: p.buffers]
        ok, value = _decode(self.codec, p.error, payload, bufs)
        self.router.sinks.pop(self.port, None)
        if ok:
            self.future.set_result(value)
        else:
            self.future.set_exception(value)

    def peer_lost(self, addr: str, reason: str) -> None:
        self.router.close_port(self.port)
        self.future.set_exception(_proc_lost(self, addr, self.expected.get(addr, set()), reason))

    def timeout(self, seconds: float) -> None:
        if not self.future.done():
            self.router.close_port(self.port)
            self.future.set_exception(CallTimeout(f"no reply within {seconds} s"))


class ValueMeshSink(_AwaitingSink):
    """Every rank's result, assembled into a ``ValueMesh`` (``call``)."""

    def __init__(self, router: Router, codec: Codec, expected: dict[str, set[int]], shape: Shape) -> None:
        super().__init__(router, codec, expected)
        self.shape = shape
        self.values: list[Any] = [None] * len(shape)
        self.remaining = len(shape)
        self.error: BaseException | None = None
        self.future: Future[ValueMesh[Any]] = Future()

    def deliver(self, env: Any, bufs: list[memoryview]) -> None:
        finished = False
        with self.lock:
            for pos, err, payload, pbufs, _last, _hv in _parts(env, bufs):
                ok, value = _decode(self.codec, err, payload, pbufs)
                if ok:
                    self.values[pos] = value
                elif self.error is None:
                    self.error = value
                self._got(pos)
                self.remaining -= 1
            finished = self.remaining <= 0
        if finished:
            self._finish()

    def _finish(self) -> None:
        self.router.close_port(self.port)
        if self.error is not None:
            self.future.set_exception(self.error)
        else:
            self.future.set_result(ValueMesh(self.shape, self.values))

    def peer_lost(self, addr: str, reason: str) -> None:
        """A proc owing results died: the call fails at once, without waiting for the healthy
        ranks (their late replies are dropped with the port)."""
        with self.lock:
            missing = self.expected.get(addr, set())
            if not missing or self.future.done():
                return
            self.error = _proc_lost(self, addr, missing, reason)
            self.expected[addr] = set()
            self.remaining = 0
        self._finish()

    def timeout(self, seconds: float) -> None:
        if not self.future.done():
            self.router.close_port(self.port)
            self.future.set_exception(CallTimeout(f"not every rank replied within {seconds} s"))


class StreamSink(_AwaitingSink):
    """Results in arrival order; several per rank for streaming endpoints (``stream``)."""

    def __init__(self, router: Router, codec: Codec, expected: dict[str, set[int]], n: int) -> None:
        super().__init__(router, codec, expected)
        self.remaining = n
        self.items: collections.deque[Future[Any]] = collections.deque()
        self.waiters: collections.deque[Future[Future[Any] | None]] = collections.deque()

    def _push(self, item: Future[Any] | None) -> None:
        with self.lock:
            if self.waiters:
                w = self.waiters.popleft()
            else:
                if item is not None:
                    self.items.append(item)
                return
        w.set_result(item)

    def deliver(self, env: Any, bufs: list[memoryview]) -> None:
        for pos, err, payload, pbufs, last, has_value in _parts(env, bufs):
            if has_value:
                ok, value = _decode(self.codec, err, payload, pbufs)
                f: Future[Any] = Future()
                if ok:
                    f.set_result(value)
                else:
                    f.set_exception(value)
                self._push(f)
            if last:
                self._got(pos)
                with self.lock:
                    self.remaining -= 1
                    end = self.remaining <= 0
                if end:
                    self._end()

    def _end(self) -> None:
        self.router.close_port(self.port)
        with self.lock:
            waiters = list(self.waiters)
            self.waiters.clear()
            self.remaining = 0
        for w in waiters:
            w.set_result(None)

    def next(self) -> Future[Future[Any] | None]:
        """A future of the next item's future, or of None at the end."""
        with self.lock:
            if self.items:
                return Future.completed(self.items.popleft())
            if self.remaining <= 0:
                return Future.completed(None)
            w: Future[Future[Any] | None] = Future()
            self.waiters.append(w)
            return w

    def peer_lost(self, addr: str, reason: str) -> None:
        with self.lock:
            missing = set(self.expected.get(addr, set()))
            for pos in missing:  # also awaited through a cast tree's head: failed once
                self._got(pos)
        for pos in sorted(missing):
            f: Future[Any] = Future()
            f.set_exception(_proc_lost(self, addr, {pos}, reason))
            self._push(f)
            with self.lock:
                self.remaining -= 1
        with self.lock:
            end = self.remaining <= 0
        if end:
            self._end()


class ReceiverSink(Sink):
    """Values sent on a user Port, in arrival order, for ``PortReceiver.recv()``."""

    def __init__(self, once_router: Router | None = None) -> None:
        self.lock = threading.Lock()
        self.values: collections.deque[tuple[bool, Any]] = collections.deque()
        self.waiters: collections.deque[Future[Any]] = collections.deque()
        self.codec: Codec = PICKLE_CODEC
        self.port = 0
        self._once_router = once_router  # set: a one-shot channel, closed after its first value
        self._closed = False

    def deliver(self, env: Any, bufs: list[memoryview]) -> None:
        for _pos, err, payload, pbufs, _last, has_value in _parts(env, bufs):
            if not has_value or self._closed:
                continue
            if self._once_router is not None:
                self._closed = True
                self._once_router.close_port(self.port)
            ok, value = _decode(self.codec, err, payload, pbufs)
            with self.lock:
                if self.waiters:
                    w = self.waiters.popleft()
                else:
                    self.values.append((ok, value))
                    continue
            if ok:
                w.set_result(value)
            else:
                w.set_exception(value)

    def recv(self) -> Future[Any]:
        with self.lock:
            if self.values:
                ok, value = self.values.popleft()
                f: Future[Any] = Future()
                if ok:
                    f.set_result(value)
                else:
                    f.set_exception(value)
                return f
            w: Future[Any] = Future()
            self.waiters.append(w)
            return w


