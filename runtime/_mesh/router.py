"""The per-process message hub: connections, per-origin FIFO, ports, local actors, cast trees.

Every process of a job (the client and every proc) has one :class:`Router`. It listens on one
address, dials peers lazily, keeps one outgoing connection per peer, and on its event-loop thread
dispatches received frames: calls to local actors (after forwarding the cast further down its
tree), results to ports, control operations to handlers.

Ordering: every message from an origin process to a destination process carries a sequence
number fixed at the origin, so casts that travel through forwarders are delivered in the origin's
order (per-sender FIFO, as Monarch guarantees); a frame that arrives early waits for the gap.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import socket
import threading
from collections.abc import Callable
from typing import Any

from .._core.errors import ConnectError, SupervisionError
from .._transport.channel import Connection, Listener, dial
from .._transport.frame import Envelope, EnvelopeTemplate, decode_envelope, encode_frame, frame_iov

__all__ = ["Router", "Sink"]

log = logging.getLogger("monarch.router")

_MAX_ENVELOPE_BYTES = 64 << 20
_MAX_FRAME_BYTES = 1 << 40

FLAG_STREAM = 1
FLAG_PORT = 2


class Sink:
    """Where results addressed to a local port go. ``deliver`` may run on any thread.

    ``expect`` maps peer addresses to the result positions still awaited from them, so the
    router can fail those positions when the peer dies.
    """

    def deliver(self, env: Any, bufs: list[memoryview]) -> None:
        raise NotImplementedError

    def peer_lost(self, addr: str, reason: str) -> None:
        """The proc at ``addr`` is gone; fail what was awaited from it."""

    def waits_on(self, addr: str) -> bool:
        return False


class Router:
    """One per process; see the module docstring.

    Args:
        loop: the process's event loop (runs on :attr:`loop_thread`).
        listen: a bound listening socket, or an address to bind.
        token: cluster token for TCP peers (None: TCP peers are refused).
        name: a readable name of this process, for errors (``client``, ``trainers/3``).
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        listen: socket.socket | str,
        *,
        token: bytes | None,
        name: str,
    ) -> None:
        self.loop = loop
        self.token = token
        self.name = name
        self.pid = os.getpid()
        if isinstance(listen, str):
            self.listener = Listener(loop, self._accepted, addr=listen, token=token)
        else:
            self.listener = Listener(loop, self._accepted, sock=listen, token=token)
        self.addr = self.listener.address
        self._lock = threading.Lock()
        self._out: dict[str, Connection] = {}
        self._incoming: set[Connection] = set()
        self._dead: dict[str, str] = {}
        self._seq_out: dict[str, int] = {}
        self._seq_in: dict[str, int] = {}
        self._held: dict[str, dict[int, tuple[Any, list[memoryview]]]] = {}
        self._port_ids = itertools.count(1)
        self.sinks: dict[int, Sink] = {}
        self.watched: set[str] = set()
        # set by the layer above
        self.on_call: Callable[[Any, list[memoryview]], None] = lambda env, bufs: None
        self.control: dict[str, Callable[[Any, list[memoryview]], None]] = {}
        self.on_peer_lost: list[Callable[[str, str], None]] = []
        self.on_incoming_closed: list[Callable[[str], None]] = []

    # -- connections -----------------------------------------------------------------------
    def _accepted(self, sock: socket.socket, peer: str) -> None:
        conn = Connection(
            sock,
            self.loop,
            self._on_frame,
            self._incoming_closed,
            max_envelope_bytes=_MAX_ENVELOPE_BYTES,
            max_frame_bytes=_MAX_FRAME_BYTES,
            peer=peer,
        )
        self._incoming.add(conn)
        conn.start_reading()

    def _incoming_closed(self, conn: Connection, exc: BaseException | None) -> None:
        self._incoming.discard(conn)
        origin = conn.state.get("origin")
        if origin:
            for cb in list(self.on_incoming_closed):
                cb(origin)

    def connection(self, addr: str) -> Connection:
        """The outgoing connection to ``addr``, dialled on first use (any thread).

        Raises:
            SupervisionError: the peer is known to be dead.
            ConnectError: it cannot be reached.
        """
        conn = self._out.get(addr)
        if conn is not None and not conn.closed:
            return conn
        with self._lock:
            conn = self._out.get(addr)
            if conn is not None and not conn.closed:
                return conn
            if addr in self._dead:
                raise SupervisionError(f"proc at {addr} is gone: {self._dead[addr]}")
            sock = dial(addr, self.token)
            conn = Connection(
                sock,
                self.loop,
                self._on_frame,
                self._outgoing_closed,
                max_envelope_bytes=_MAX_ENVELOPE_BYTES,
                max_frame_bytes=_MAX_FRAME_BYTES,
                peer=addr,
            )
            conn.state["addr"] = addr
            hello = Envelope.new_message()
            hello.kind = "hello"
            hello.origin = self.addr
            conn.send(encode_frame(hello, []))
            self._out[addr] = conn
        self.call_on_loop(conn.start_reading)
        return conn

    def adopt(self, addr: str, sock: socket.socket) -> Connection:
        """Use an already-connected socket as the outgoing connection to ``addr``."""
        from .._transport.channel import _tune

        _tune(sock)
        with self._lock:
            conn = Connection(
                sock,
                self.loop,
                self._on_frame,
                self._outgoing_closed,
                max_envelope_bytes=_MAX_ENVELOPE_BYTES,
                max_frame_bytes=_MAX_FRAME_BYTES,
                peer=addr,
            )
            conn.state["addr"] = addr
            hello = Envelope.new_message()
            hello.kind = "hello"
            hello.origin = self.addr
            conn.send(encode_frame(hello, []))
            self._out[addr] = conn
        self.call_on_loop(conn.start_reading)
        return conn

    def _outgoing_closed(self, conn: Connection, exc: BaseException | None) -> None:
        addr = conn.state.get("addr", "")
        with self._lock:
            if self._out.get(addr) is conn:
                del self._out[addr]
        if addr and addr not in self._dead:
            reason = f"connection lost{': ' + str(exc) if exc else ''}"
            if addr in self.watched:
                # a child we watch through its pidfd: its exit status arrives within
                # milliseconds and names the cause; fall back to EOF if it does not
                self.loop.call_later(0.25, self.mark_dead, addr, reason)
            else:
                self.mark_dead(addr, reason)

    def mark_dead(self, addr: str, reason: str) -> None:
        """Record that the proc at ``addr`` is gone and fail everything awaiting it."""
        with self._lock:
            if addr in self._dead:
                if reason and "connection lost" in self._dead[addr]:
                    self._dead[addr] = reason  # a precise cause (exit status) beats EOF
                return
            self._dead[addr] = reason
            conn = self._out.pop(addr, None)
        if conn is not None:
            conn.close(None)
        for sink in list(self.sinks.values()):
            if sink.waits_on(addr):
                sink.peer_lost(addr, reason)
        for cb in list(self.on_peer_lost):
            cb(addr, reason)

    def dead_reason(self, addr: str) -> str | None:
        return self._dead.get(addr)

    # -- sending -------------------------------------------------------------------------------
    def next_seq(self, addr: str) -> int:
        with self._lock:
            n = self._seq_out.get(addr, 0) + 1
            self._seq_out[addr] = n
            return n

    def send(self, addr: str, env: Any, bufs: list[Any], *, sequenced: bool = True) -> None:
        """Send one envelope (``env.buffers`` is filled in here) to ``addr`` from any thread.

        Raises:
            SupervisionError: the destination is known dead.
            ConnectError: it cannot be reached.
        """
        if bufs:
            env.buffers = [b.nbytes if type(b) is memoryview else memoryview(b).nbytes for b in bufs]
        env.origin = self.addr
        if addr == self.addr:
            if sequenced:
                env.seq = 0
            env.shm = ()
            data = encode_frame(env, bufs)
            self.call_on_loop(self._local_frame, data)
            return
        conn = self._out.get(addr)
        if conn is None or conn.closed:
            conn = self.connection(addr)
        if bufs:
            bufs = _share(conn, env, bufs)
        if sequenced:
            with self._lock:
                n = self._seq_out.get(addr, 0) + 1
                self._seq_out[addr] = n
                env.seq = n
                conn.send(encode_frame(env, bufs))
        else:
            conn.send(encode_frame(env, bufs))

    def send_template(self, addr: str, tpl: EnvelopeTemplate, reply_port: int, payload: Any, bufs: list[Any]) -> None:
        """Send a sequenced message built from ``tpl`` (which carries this router's address as
        ``origin``) with its variable parts, from any thread.

        Raises:
            SupervisionError: the destination is known dead.
            ConnectError: it cannot be reached.
        """
        lengths = [b.nbytes if type(b) is memoryview else memoryview(b).nbytes for b in bufs] if bufs else []
        if addr == self.addr:
            self.call_on_loop(self._local_frame, frame_iov(tpl.encode(0, reply_port, payload, lengths), bufs))
            return
        conn = self._out.get(addr)
        if conn is None or conn.closed:
            conn = self.connection(addr)
        shm = conn.share(bufs) if bufs else None
        if shm:
            bufs = [b for b, s in zip(bufs, shm) if not s]
        with self._lock:
            n = self._seq_out.get(addr, 0) + 1
            self._seq_out[addr] = n
            conn.send(frame_iov(tpl.encode(n, reply_port, payload, lengths, shm), bufs))

    def send_presequenced(self, addr: str, env: Any, bufs: list[Any]) -> None:
        """Send an envelope whose ``seq`` the caller fixed (cast trees)."""
        if bufs and len(env.buffers) != len(bufs):
            lst = env.init("buffers", len(bufs))
            for i, b in enumerate(bufs):
                lst[i] = memoryview(b).nbytes
        if addr == self.addr:
            env.seq = 0
            env.shm = ()
            self.call_on_loop(self._local_frame, encode_frame(env, bufs))
            return
        conn = self.connection(addr)
        if bufs:
            bufs = _share(conn, env, bufs)
        conn.send(encode_frame(env, bufs))

    def _local_frame(self, iov: list[Any]) -> None:
        env = decode_envelope(bytes(iov[0]))
        bufs: list[memoryview] = []
        i = 1
        for n in env.buffers:
            b = memoryview(iov[i]).cast("B")
            bufs.append(memoryview(bytearray(b)) if b.readonly else b)
            i += 1
            if n & 7:
                i += 1
        self._dispatch(env, bufs)

    def call_on_loop(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` on the loop thread (at once when already there)."""
        if _running_loop() is self.loop:
            fn(*args)
        else:
            try:
                self.loop.call_soon_threadsafe(fn, *args)
            except RuntimeError:  # loop closed during interpreter exit
                pass

    # -- ports ---------------------------------------------------------------------------------
    def new_port(self, sink: Sink) -> int:
        pid = next(self._port_ids)
        self.sinks[pid] = sink
        return pid

    def close_port(self, port: int) -> None:
        self.sinks.pop(port, None)

    # -- receiving -----------------------------------------------------------------------------
    def _on_frame(self, conn: Connection, env: Any, bufs: list[memoryview]) -> None:
        seq = env.seq
        if seq:
            origin = env.origin
            expected = self._seq_in.get(origin, 1)
            if seq != expected:
                if seq > expected:
                    self._held.setdefault(origin, {})[seq] = (env, bufs)
                return
            self._seq_in[origin] = seq + 1
            self._dispatch(env, bufs)
            held = self._held.get(origin)
            if held:
                nxt = seq + 1
                while nxt in held:
                    e, b = held.pop(nxt)
                    self._seq_in[origin] = nxt + 1
                    self._dispatch(e, b)
                    nxt += 1
            return
        if env.kind == "hello":
            conn.state["origin"] = env.origin
            return
        self._dispatch(env, bufs)

    def _dispatch(self, env: Any, bufs: list[memoryview]) -> None:
        kind = env.kind
        if kind == "call":
            self.on_call(env, bufs)
        elif kind == "reply" or kind == "port":
            sink = self.sinks.get(env.port)
            if sink is not None:
                sink.deliver(env, bufs)
        elif kind == "control" or kind == "supervision":
            handler = self.control.get(env.endpoint)
            if handler is None:
                log.error("unknown control operation %r from %s", env.endpoint, env.origin)
            else:
                handler(env, bufs)

    def close(self) -> None:
        """Close the listener and every connection; call on the loop thread."""
        self.listener.close()
        for conn in list(self._out.values()) + list(self._incoming):
            conn.close(None)

    def __repr__(self) -> str:
        return f"<Router {self.name!r} addr={self.addr!r} peers={len(self._out)} ports={len(self.sinks)}>"


def _share(conn: Connection, env: Any, bufs: list[Any]) -> list[Any]:
    """Put the large buffers in shared memory when ``conn`` can; returns those still inline."""
    shm = conn.share(bufs)
    env.shm = shm or ()
    return [b for b, s in zip(bufs, shm) if not s] if shm else bufs


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


__all__ += ["FLAG_PORT", "FLAG_STREAM", "ConnectError"]
