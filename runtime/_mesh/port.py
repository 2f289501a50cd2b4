"""Ports and channels (Monarch's ``Port``, ``PortReceiver`` and ``Channel.open()``).

A port is a reference to a receiver in some process; it can be sent to any actor (it pickles by
reference) and ``send`` delivers a value there; ``PortReceiver.recv()`` gives a future of the
next value. Ports are user-facing objects that may be unpickled in any process: they find that
process's runtime through :mod:`monarch._mesh.current`.
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

from .._core.future import Future
from .._transport.codec import Codec
from .._transport.frame import Envelope
from .._transport.messages import Kind
from .._transport.pickle_codec import PICKLE_CODEC
from .current import current_runtime
from .sinks import ReceiverSink
from .wire_errors import encode_error

__all__ = ["Channel", "Port", "PortReceiver"]

R = TypeVar("R")


class Port(Generic[R]):
    """A reference to a receiver: ``send(value)`` delivers ``value`` there, from any process.

    Args:
        addr: the address of the process holding the receiver.
        port: the receiver's port id in that process.
        rank: the position reported with each value (the sender's message rank).
        codec: how values are encoded (None: pickle).
        once: an explicit response port: the first value completes the call.
    """

    __slots__ = ("_addr", "_codec", "_once", "_port", "_rank", "_used")

    def __init__(self, addr: str, port: int, rank: int = 0, codec: Codec | None = None, once: bool = False) -> None:
        self._addr = addr
        self._port = port
        self._rank = rank
        self._codec = codec
        self._once = once
        self._used = False

    def send(self, obj: R) -> None:
        """Deliver ``obj`` to the receiver (fire and forget; any thread).

        Raises:
            TypeError: ``obj`` cannot be encoded.
            ValueError: a once port (``Channel.open(once=True)``) was already sent on.
        """
        self._claim()
        payload, bufs = (self._codec or PICKLE_CODEC).encode_result(obj)
        self._send(False, payload, bufs)

    def exception(self, exc: Exception) -> None:
        """Deliver an error: the receiving future raises ``ActorError(exc)``."""
        self._claim()
        payload, bufs = encode_error(exc, "")
        self._send(True, payload, bufs)

    def _claim(self) -> None:
        if self._once:
            if self._used:
                raise ValueError(f"{self!r} is a once port and was already sent on")
            self._used = True

    def _send(self, err: bool, payload: Any, bufs: list[Any]) -> None:
        env = Envelope.new_message()
        env.kind = Kind.REPLY
        env.port = self._port
        p = env.init("parts", 1)[0]
        p.rank = self._rank
        p.error = err
        p.length = len(payload)
        p.buffers = len(bufs)
        p.last = self._once
        env.payload = payload
        current_runtime().router.send(self._addr, env, bufs, sequenced=False)

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

    def __init__(self, sink: ReceiverSink, port: int) -> None:
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
            once: a one-shot channel (Monarch's ``OncePort``): the receiver takes the first value
                only and closes; a second ``send`` on the same Port object raises ``ValueError``,
                and values that still arrive from copies of the port are dropped.
        """
        router = current_runtime().router
        sink = ReceiverSink(router if once else None)
        pid = router.new_port(sink)
        sink.port = pid
        return Port(router.addr, pid, 0, None, once=once), PortReceiver(sink, pid)
