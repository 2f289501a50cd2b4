"""Ports, channels and the result sinks behind futures and streams.

Semantics follow Meta Monarch's ``Port``, ``PortReceiver`` and ``Channel.open()``: a port is a
reference to a receiver in some process; it can be sent to any actor (it pickles by reference)
and ``send`` delivers a value there; ``PortReceiver.recv()`` gives a future of the next value.
"""

from __future__ import annotations

import collections
import threading
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from .._core.errors import SupervisionError
from .._core.future import Future
from .._core.shape import Shape
from .._core.value_mesh import ValueMesh
from .._transport.codec import Codec
from .._transport.frame import Envelope
from .._transport.pickle_codec import PICKLE_CODEC
from .router import Sink

if TYPE_CHECKING:
    from .router import Router

__all__ = ["Channel", "OneSink", "Port", "PortReceiver", "StreamSink", "ValueMeshSink"]

R = TypeVar("R")


def _parts(env: Any, bufs: list[memoryview]) -> list[tuple[int, bool, Any, list[memoryview], bool, bool]]:
    """Split a reply into ``(position, is_error, payload, buffers, last, has_value)``."""
    payload = env.payload
    out = []
    off = 0
    bi = 0
    no_value = bool(env.flags & 4)
    for p in env.parts:
        n, nb = p.length, p.buffers
        out.append((p.rank, p.error, payload[off : off + n], bufs[bi : bi + nb], p.last, not no_value))
        off += n
        bi += nb
    return out


def _decode(codec: Codec, err: bool, payload: Any, bufs: list[memoryview]) -> tuple[bool, Any]:
    if err:
        from .hosting import decode_error

        return False, decode_error(payload, bufs)
    try:
        return True, codec.decode_result(memoryview(payload), bufs)
    except Exception as exc:
        return False, exc


class _AwaitingSink(Sink):
    """Common bookkeeping: which peers results are awaited from, so peer loss fails them."""

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
        self.future.set_exception(SupervisionError(f"the actor's proc ({addr}) failed: {reason}"))

    def timeout(self, seconds: float) -> None:
        from .._core.errors import CallTimeout

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
        with self.lock:
            missing = self.expected.get(addr, set())
            if self.error is None and missing:
                self.error = SupervisionError(f"proc at {addr} failed: {reason}")
            self.remaining -= len(missing)
            self.expected[addr] = set()
            finished = self.remaining <= 0
        if finished:
            self._finish()

    def timeout(self, seconds: float) -> None:
        from .._core.errors import CallTimeout

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
            missing = self.expected.get(addr, set())
            n = len(missing)
            self.expected[addr] = set()
        for _ in range(n):
            f: Future[Any] = Future()
            f.set_exception(SupervisionError(f"proc at {addr} failed: {reason}"))
            self._push(f)
            with self.lock:
                self.remaining -= 1
        with self.lock:
            end = self.remaining <= 0
        if end:
            self._end()


class _ReceiverSink(Sink):
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.values: collections.deque[tuple[bool, Any]] = collections.deque()
        self.waiters: collections.deque[Future[Any]] = collections.deque()
        self.codec: Codec = PICKLE_CODEC

    def deliver(self, env: Any, bufs: list[memoryview]) -> None:
        for _pos, err, payload, pbufs, _last, has_value in _parts(env, bufs):
            if not has_value:
                continue
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


class Port(Generic[R]):
    """A reference to a receiver: ``send(value)`` delivers ``value`` there, from any process.

    Args:
        addr: the address of the process holding the receiver.
        port: the receiver's port id in that process.
        rank: the position reported with each value (the sender's message rank).
        codec: how values are encoded (None: pickle).
        once: an explicit response port: the first value completes the call.
    """

    __slots__ = ("_addr", "_codec", "_once", "_port", "_rank")

    def __init__(self, addr: str, port: int, rank: int = 0, codec: Codec | None = None, once: bool = False) -> None:
        self._addr = addr
        self._port = port
        self._rank = rank
        self._codec = codec
        self._once = once

    def send(self, obj: R) -> None:
        """Deliver ``obj`` to the receiver (fire and forget; any thread).

        Raises:
            TypeError: ``obj`` cannot be encoded.
        """
        payload, bufs = (self._codec or PICKLE_CODEC).encode_result(obj)
        self._send(False, payload, bufs)

    def exception(self, exc: Exception) -> None:
        """Deliver an error: the receiving future raises ``ActorError(exc)``."""
        from .hosting import encode_error

        payload, bufs = encode_error(exc, "")
        self._send(True, payload, bufs)

    def _send(self, err: bool, payload: Any, bufs: list[Any]) -> None:
        from .runtime import get_runtime

        env = Envelope.new_message()
        env.kind = "reply"
        env.port = self._port
        p = env.init("parts", 1)[0]
        p.rank = self._rank
        p.error = err
        p.length = len(payload)
        p.buffers = len(bufs)
        p.last = self._once
        env.payload = payload
        get_runtime().router.send(self._addr, env, bufs, sequenced=False)

    def __reduce__(self) -> tuple[Any, ...]:
        codec = self._codec
        try:
            import pickle

            pickle.dumps(codec)
        except Exception:
            codec = None
        return (Port, (self._addr, self._port, self._rank, codec, self._once))

    def __repr__(self) -> str:
        return f"<Port {self._addr}#{self._port} rank={self._rank}>"


class PortReceiver(Generic[R]):
    """The receiving end of a channel, in the process that opened it."""

    def __init__(self, sink: _ReceiverSink, port: int) -> None:
        self._sink = sink
        self._port = port

    def recv(self) -> Future[R]:
        """A future of the next value sent on the channel's port (in send order per sender)."""
        return self._sink.recv()

    def __repr__(self) -> str:
        return f"<PortReceiver #{self._port} queued={len(self._sink.values)}>"


class Channel(Generic[R]):
    """Factory of (Port, PortReceiver) pairs (Monarch's ``Channel.open``)."""

    @staticmethod
    def open(once: bool = False) -> tuple[Port[R], PortReceiver[R]]:
        """Open a channel whose receiver lives in the calling process.

        Args:
            once: the port is meant for a single value (kept for Monarch compatibility).
        """
        from .runtime import get_runtime

        router = get_runtime().router
        sink = _ReceiverSink()
        pid = router.new_port(sink)
        return Port(router.addr, pid, 0, None, once=False), PortReceiver(sink, pid)
