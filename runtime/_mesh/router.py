"""The per-process message hub: links to peers, per-origin FIFO, ports, liveness.

Every process of a job (the client and every proc) has one :class:`Router`. It listens on one
address, dials peers lazily, keeps one outgoing link per peer, and on its event-loop thread
dispatches received frames: calls to the actor host, results to ports (sinks), control operations
to the handlers registered for them. It is the one source of truth for which peers are alive.

Ordering: every message from an origin process to a destination process carries a sequence
number fixed at the origin, so casts that travel through forwarders are delivered in the origin's
order (per-sender FIFO, as Monarch guarantees); a frame that arrives early waits for the gap. When
a forwarder dies, the origin tells each destination below it which sequence numbers travelled
through it (:data:`ControlOp.SKIP`), so healthy ranks never wait for a message that died with it.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import os
import select
import socket
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .._core.errors import ConnectError, SupervisionError
from .._core.future import Future
from .._transport.base import CloseHandler, FrameHandler, Link, Transport
from .._transport.frame import Envelope, encode_frame, frame_iov
from .._transport.messages import ControlOp, Kind
from .._transport.pickle_codec import dumps, loads
from .liveness import Heartbeats
from .outgoing import ReplyPart, TemplateMessage, encode, local_buffers

__all__ = ["Router", "RouterLimits", "Sink"]

log = logging.getLogger("monarch.router")

Handler = Callable[[Any, list[memoryview]], None]
# dead peers remembered (to fail sends at once and name the cause); older ones are forgotten
_DEAD_KEPT = 65536
TransportFactory = Callable[[FrameHandler, CloseHandler], Transport]


@dataclass(frozen=True)
class RouterLimits:
    """Bounds on what peers may make this process hold.

    Attributes:
        max_envelope_bytes: largest envelope accepted (bigger: the link is closed).
        max_frame_bytes: largest frame (envelope + out-of-band buffers) accepted, and sent: a
            bigger message is not sent (:meth:`Router.send` raises ``SupervisionError``).
        max_held_frames: frames held while waiting for sequence gaps, every origin together;
            beyond it the link that brought the next one is closed (a peer cannot make us hold
            unbounded data, however many origins it claims).
        max_held_bytes: the same bound in bytes of held payload and buffers.
        peer_timeout_s: a watched child that sends no heartbeat for this long and is stopped
            (SIGSTOP; or any silent peer the OS cannot be asked about) is declared hung,
            reported as failed and killed. None disables the check.
        frozen_timeout_s: a watched child that the OS says is running but that sends no
            heartbeat for this long is declared hung too (frozen with its GIL held, say).
        start_timeout_s: a watched child that sends no first heartbeat this long after it was
            started is declared hung the same way (start-up imports take longer than beats).
        forwarded_seq_window: per forwarder, how many (destination, seq) pairs of the latest casts
            sent through it are remembered so they can be skipped at the destinations if it dies.
    """

    max_envelope_bytes: int = 64 << 20
    max_frame_bytes: int = 10 << 30  # Monarch's codec_max_frame_length default
    max_held_frames: int = 65536
    max_held_bytes: int = 1 << 30
    peer_timeout_s: float | None = 3.0
    start_timeout_s: float = 30.0
    frozen_timeout_s: float = 60.0
    forwarded_seq_window: int = 4096


class Sink:
    """Where results addressed to a local port go. ``deliver`` runs on the loop thread."""

    def deliver(self, env: Any, bufs: list[memoryview]) -> None:
        raise NotImplementedError

    def peer_lost(self, addr: str, reason: str) -> None:
        """The proc at ``addr`` is gone; fail what was awaited from it."""

    def waits_on(self, addr: str) -> bool:
        return False


_NO_BUFS: list[int] = []  # never mutated: the lengths of a message without buffers
# the kinds as module constants: a class attribute of an Enum costs a lookup per frame
_CALL, _REPLY, _PORT, _HELLO = Kind.CALL, Kind.REPLY, Kind.PORT, Kind.HELLO
_CONTROL, _SUPERVISION = Kind.CONTROL, Kind.SUPERVISION
# the endpoint of the HELLO that opens a caller thread's direct link (see _DirectLink), and the
# marker of the reply addresses a proc gives such links
_DIRECT_HELLO = "direct-replies"
_DIRECT_MARK = "#direct"
# direct links one process opens at most (threads x peers); beyond, calls take the shared link
_DIRECT_MAX = 64
# how long a caller waits to open one (dial + token handshake) before it takes the shared link
_DIRECT_DIAL_S = 1.0
# a thread's direct-link table entries before a link is opened (see Router._direct_link)
_NOT_YET = object()
_FIRST_CALL = object()


class _DirectLink:
    """A caller thread's own link to one peer, for calls whose result it waits for.

    A thread blocked in ``Future.get()`` on a call's result would otherwise be woken twice:
    the event loop's thread wakes to read the reply, then hands it over to the caller. Calls a
    plain thread (no event loop running on it) makes to a Unix peer, from its second call to
    that peer on, go out on a link of its own, which no event loop reads: the peer sends their
    replies back on it (it rewrites the reply address of calls arriving on it, see
    ``Router._on_frame``), and the caller's ``get()`` reads and delivers them itself
    (:meth:`pump`), woken once, by the kernel. Sequence numbers are the origin's as on the
    shared link, so per-sender order holds across both. On the answering side only the thread
    handling such a call answers on the direct link, and whatever it sends the caller before
    answering (printed lines, port messages) goes there too, ahead of the answer
    (``Router.begin_call``); any other answer takes the shared link.

    Any other way of waiting on one of its futures (``await``, a done callback, polling
    ``done()``, a second thread's ``get()``) first hands the link to the event loop for good
    (:meth:`handover`); a failure the loop notices (the peer's death, a timeout) completes the
    future and wakes the pump through ``wake_fd``.
    """

    __slots__ = ("__weakref__", "delivered", "handed", "link", "lock", "poller", "pumping", "router", "wake_fd")

    def __init__(self, router: Router, link: Any) -> None:
        self.router = router
        self.link = link
        self.lock = threading.Lock()  # one reader at a time
        self.handed = False
        self.pumping = 0  # the thread reading it now (its own deliveries need no wake-up)
        self.delivered = 0  # frames the calling threads read and delivered themselves
        self.wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.poller = select.poll()
        self.poller.register(link.fd, select.POLLIN)
        self.poller.register(self.wake_fd, select.POLLIN)

    def release(self) -> None:
        """Wake a pump (``Future`` calls it as a waiter when the loop completes the future)."""
        if self.pumping == threading.get_ident():
            return  # the pump itself completed it, or handed the link over from a callback
        try:
            os.eventfd_write(self.wake_fd, 1)
        except OSError:  # closed
            pass

    def handover(self) -> None:
        """Let the event loop read this link from now on (any thread; idempotent)."""
        if self.handed:
            return
        self.handed = True
        self.release()  # a pump in poll() returns and stops reading
        self.router.call_on_loop(self._loop_reads)

    def _loop_reads(self) -> None:
        with self.lock:  # after a pump's last read
            self.link.start_reading()

    def pump(self, fut: Future[Any], deadline: float | None) -> None:
        """Read and deliver this link's frames on the calling thread until ``fut`` is done, the
        monotonic ``deadline`` passes, or the link can no longer be read here (handed over,
        closed, another thread reading: then the caller waits for the loop as usual)."""
        if not self.lock.acquire(False):
            self.handover()  # two readers: the loop takes over
            return
        link = self.link
        frames: list[Any] = []
        registered = False
        self.pumping = threading.get_ident()
        try:
            registered = fut._add_waiter(self)
            if not registered:
                return
            while not fut._finished() and not self.handed and not link.closed:
                if deadline is None:
                    ms = -1
                else:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return
                    ms = max(1, int(left * 1000.0 + 0.999))
                ready = self.poller.poll(ms)
                if not ready:
                    continue
                for fd, _ev in ready:
                    if fd == self.wake_fd:
                        try:
                            os.eventfd_read(self.wake_fd)
                        except OSError:
                            pass
                        break
                frames, ended, exc = link.read_frames()
                if frames:
                    self.delivered += len(frames)
                    self.lock.release()
                    try:
                        link.deliver(frames)  # outside the lock: results' callbacks may wait too
                    finally:
                        frames = []
                        self.lock.acquire()
                if ended:
                    link.schedule_close(exc)
                    return
        finally:
            self.pumping = 0
            if registered:
                fut._remove_waiter(self)
            self.lock.release()

    def close(self) -> None:
        """Stop direct reads and close the link (loop thread)."""
        self.handed = True
        self.release()
        self.link.close(None)

    def __del__(self) -> None:  # its thread is gone (the thread-local held it)
        try:
            os.close(self.wake_fd)
            if not self.handed and self.link.sock is not None:
                self.link.sock.close()  # never read by the loop: nothing else holds it
        except OSError:
            pass

    def __repr__(self) -> str:
        return f"<_DirectLink {self.link.peer!r} handed={self.handed} closed={self.link.closed}>"


class Router:
    """One per process; see the module docstring.

    Args:
        loop: the process's event loop; build the router on its thread.
        listen: a bound listening socket, or an address to bind.
        transport: makes the transport (``SocketTransport``, or ``monarch.testing``'s in-memory
            one) given the router's frame and close handlers.
        name: a readable name of this process, for errors (``client``, ``trainers/3``).
        limits: bounds on peers (see :class:`RouterLimits`).
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        listen: socket.socket | str,
        *,
        transport: TransportFactory,
        name: str,
        limits: RouterLimits | None = None,
    ) -> None:
        self.loop = loop
        self.name = name
        self.limits = limits or RouterLimits()
        self.pid = os.getpid()
        self.transport = transport(self._on_frame, self._link_closed)
        self.listener = self.transport.listen(listen, self._accepted)
        self.addr = self.listener.address
        self._lock = threading.Lock()
        self._out: dict[str, Link] = {}
        self._incoming: set[Link] = set()
        self._first_incoming: Link | None = None
        self._dead: dict[str, str] = {}
        self._seq_out: dict[str, int] = {}
        self._seq_in: dict[str, int] = {}
        self._held: dict[str, dict[int, tuple[Any, list[memoryview]]]] = {}
        self._held_bytes: dict[str, int] = {}
        self._held_frames = 0  # held frames of every origin together
        self._held_total = 0  # and their bytes
        self._skip: dict[str, set[int]] = {}
        self._via: dict[str, collections.deque[tuple[str, int]]] = {}
        self._port_ids = itertools.count(1)
        self.sinks: dict[int, Sink] = {}
        self.heartbeats = Heartbeats(
            loop, peer_timeout_s=self.limits.peer_timeout_s, start_timeout_s=self.limits.start_timeout_s,
            frozen_timeout_s=self.limits.frozen_timeout_s, is_dead=self._dead.__contains__, hung=self._declare_hung,
        )
        self._on_call: Handler = lambda env, bufs: None
        self._control: dict[str, Handler] = {ControlOp.SKIP: self._on_skip, ControlOp.HEARTBEAT: self.heartbeats.beat}
        self._owner_only: set[str] = set()
        self._on_peer_lost: list[Callable[[str, str], None]] = []
        self._on_owner_lost: list[Callable[[], None]] = []
        self._on_hung: Callable[[str, str], None] | None = None
        self._closed = False
        # caller threads' direct links (see _DirectLink): this thread's, by peer address; all
        # of them; and, on the answering side, the accepted ones by their reply address
        self._direct_tl = threading.local()
        self._direct_all: weakref.WeakSet[_DirectLink] = weakref.WeakSet()  # a dead thread's go
        self._direct_in: dict[Link, str] = {}
        self._direct_ids = itertools.count(1)

    # -- wiring (by the composition root) ------------------------------------------------------
    def set_call_handler(self, handler: Handler) -> None:
        """Where calls and casts to local actors go (the actor host)."""
        self._on_call = handler

    def handle_control(self, op: ControlOp, handler: Handler, *, owner_only: bool = False) -> None:
        """Run ``handler(env, bufs)`` on the loop thread for control envelopes naming ``op``.

        Args:
            owner_only: accept ``op`` only on this process's owner link (the first link it
                accepted, see :meth:`on_owner_lost`); from any other link it is dropped and logged.
        """
        self._control[op] = handler
        if owner_only:
            self._owner_only.add(op)

    def on_peer_lost(self, callback: Callable[[str, str], None]) -> None:
        """Call ``callback(addr, reason)`` (loop thread) when a peer is declared dead."""
        self._on_peer_lost.append(callback)

    def on_owner_lost(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` when the first link accepted by this process closes.

        A proc's parent connects to the proc's listening socket before the proc starts, so that
        link is the owner's; no other peer can end it by claiming the owner's address.
        """
        self._on_owner_lost.append(callback)

    def on_hung(self, callback: Callable[[str, str], None]) -> None:
        """Call ``callback(addr, reason)`` when a watched child stops sending heartbeats."""
        self._on_hung = callback

    # -- links ---------------------------------------------------------------------------------
    def _accepted(self, link: Link) -> None:
        self._incoming.add(link)
        index = link.state.get("accept_index")
        if self._first_incoming is None and (index is None or index == 0):
            self._first_incoming = link  # the owner's: it was in the backlog before we started

    def _link_closed(self, link: Link, exc: BaseException | None) -> None:
        if link.outgoing:
            self._outgoing_closed(link, exc)
            return
        self._incoming.discard(link)
        if self._direct_in:
            key = self._direct_in.pop(link, None)
            if key is not None and self._out.get(key) is link:
                del self._out[key]
        if link is self._first_incoming:
            for cb in list(self._on_owner_lost):
                cb()

    def connection(self, addr: str) -> Link:
        """The outgoing link to ``addr``, made on first use (any thread; never blocks: the
        transport dials in the background and queues what is sent meanwhile; a failure to
        connect declares ``addr`` dead, which fails what awaited it).

        Raises:
            SupervisionError: the peer is known to be dead.
            ValueError: ``addr`` is malformed.
        """
        conn = self._out.get(addr)
        if conn is not None and not conn.closed:
            return conn
        with self._lock:
            conn = self._out.get(addr)
            if conn is not None and not conn.closed:
                return conn
            if addr in self._dead:
                raise SupervisionError.proc_failed(f"on proc {addr}", self._dead[addr])
            if _DIRECT_MARK in addr:
                raise ConnectError(f"cannot reach {addr}: the caller's direct link is closed")
            return self._outgoing(addr, self.transport.connect(addr))

    def adopt(self, addr: str, sock: socket.socket) -> Link:
        """Use an already-connected socket as the outgoing link to ``addr``."""
        with self._lock:
            return self._outgoing(addr, self.transport.adopt(addr, sock))

    def _outgoing(self, addr: str, conn: Link) -> Link:
        """Register the link (lock held) and introduce ourselves on it."""
        conn.state["addr"] = addr
        hello = Envelope.new_message()
        hello.kind = Kind.HELLO
        hello.origin = self.addr
        self._out[addr] = conn
        try:
            conn.send(encode_frame(hello, []))
        except ConnectionError:
            pass  # the dial failed already: the close handler declares ``addr`` dead
        return conn

    def _outgoing_closed(self, conn: Link, exc: BaseException | None) -> None:
        addr = conn.state.get("addr", "")
        with self._lock:
            if self._out.get(addr) is conn:
                del self._out[addr]
        if addr and addr not in self._dead and not self._closed:
            reason = f"connection lost{': ' + str(exc) if exc else ''}"
            if addr in self.heartbeats:
                # a child watched through its pidfd: its exit status arrives within
                # milliseconds and names the cause; fall back to EOF if it does not
                self.loop.call_later(0.25, self.mark_dead, addr, reason)
            else:
                self.mark_dead(addr, reason)

    # -- liveness --------------------------------------------------------------------------------
    def watch(self, addr: str, probe: Callable[[], str | None] | None = None) -> None:
        """Watch the child at ``addr``: it must send heartbeats (loop thread).

        Args:
            probe: tells the child's scheduler state from the OS (``"T"`` stopped, ``"R"``,
                ``"S"``, ``"D"``, ...; None when it is gone). A child on this host whose beats are
                late is declared hung at ``peer_timeout_s`` only when it is stopped; one that
                is running but silent (a busy machine, a loaded link) gets ``frozen_timeout_s``.
                None: no OS view (a remote peer), late beats alone decide at ``peer_timeout_s``.
        """
        self.heartbeats.watch(addr, probe)

    def _declare_hung(self, addr: str, reason: str) -> None:
        self.mark_dead(addr, reason)
        if self._on_hung is not None:
            self._on_hung(addr, reason)

    def mark_dead(self, addr: str, reason: str) -> None:
        """Record that the proc at ``addr`` is gone and fail everything awaiting it (loop thread)."""
        with self._lock:
            if addr in self._dead:
                if reason and "connection lost" in self._dead[addr]:
                    self._dead[addr] = reason  # a precise cause (exit status) beats EOF
                return
            self._dead[addr] = reason
            if len(self._dead) > _DEAD_KEPT:  # the oldest first: a later send there just fails again
                del self._dead[next(iter(self._dead))]
            conn = self._out.pop(addr, None)
            self.heartbeats.forget(addr)
            self._seq_out.pop(addr, None)
            via = self._via.pop(addr, None)
            # what it sent us that still waits for a gap will never be completed by it
            dropped = self._held.pop(addr, None)
            if dropped:
                self._held_frames -= len(dropped)
                self._held_total -= self._held_bytes.get(addr, 0)
            self._held_bytes.pop(addr, None)
            self._skip.pop(addr, None)
        if conn is not None:
            conn.close(None)
        if self._direct_all:
            with self._lock:
                direct = [d for d in self._direct_all if d.link.peer == addr]
                for d in direct:
                    self._direct_all.discard(d)
            for d in direct:
                d.close()
        if via:
            self._skip_lost(via)
        for sink in list(self.sinks.values()):
            if sink.waits_on(addr):
                sink.peer_lost(addr, reason)
        for cb in list(self._on_peer_lost):
            cb(addr, reason)

    def dead_reason(self, addr: str) -> str | None:
        """Why the peer at ``addr`` is dead, or None while it is believed alive."""
        return self._dead.get(addr)

    # -- sending -------------------------------------------------------------------------------
    def next_seq(self, addr: str) -> int:
        """Reserve the next sequence number from this origin to ``addr`` (cast trees)."""
        with self._lock:
            n = self._seq_out.get(addr, 0) + 1
            self._seq_out[addr] = n
            return n

    def forwarded(self, forwarder: str, dest: str, seq: int) -> None:
        """Remember that message ``seq`` to ``dest`` travels through ``forwarder``."""
        with self._lock:
            via = self._via.get(forwarder)
            if via is None:
                via = self._via[forwarder] = collections.deque(maxlen=self.limits.forwarded_seq_window)
            via.append((dest, seq))

    def send(self, addr: str, msg: Any, bufs: list[Any], *, sequenced: bool = True, seq: int = 0) -> None:
        """Send one message to ``addr`` from any thread: the one send path.

        Args:
            msg: an :class:`Envelope`, a :class:`TemplateMessage` or a :class:`ReplyPart`.
            bufs: out-of-band buffers sent after the envelope (large ones by shared memory).
            sequenced: give it the next sequence number to ``addr`` (per-sender FIFO).
            seq: a sequence number fixed by the caller (cast trees); overrides ``sequenced``.

        Raises:
            SupervisionError: the destination is known dead, or the frame is larger than
                ``limits.max_frame_bytes`` (then nothing is sent and no sequence number is used).
            ConnectError: it cannot be reached.
        """
        if addr == self.addr:
            t = type(msg)
            env = msg.envelope() if t is TemplateMessage else msg.envelope(len(bufs)) if t is ReplyPart else msg.copy()
            env.origin = self.addr
            env.seq = 0
            self.call_on_loop(self._dispatch, env, local_buffers(bufs))
            return
        if self._direct_in:  # this process answers calls on caller threads' direct links
            addr, alias = self._direct_route(addr)
        else:
            alias = None
        conn = self._out.get(addr)
        if conn is None or conn.closed:
            conn = self.connection(addr)
        shared = conn
        fut: Any = None
        if alias is not None:
            conn = alias
        elif type(msg) is TemplateMessage and msg.reply_port and not bufs and not seq and sequenced and not msg.base.flags:
            sink = self.sinks.get(msg.reply_port)
            fut = getattr(sink, "future", None)
            # every reply from this one peer (a call to several peers stays on the shared links)
            if type(fut) is Future and len(getattr(sink, "expected", ())) == 1:
                direct = self._direct_link(addr)
                if direct is not None:
                    fut._direct = direct  # before the send: its reply may come at once
                    conn = direct.link
                else:
                    fut = None
            else:
                fut = None
        limit = self.limits.max_frame_bytes
        if bufs:
            lengths = [b.nbytes if type(b) is memoryview else memoryview(b).nbytes for b in bufs]
            room = limit - sum(lengths)
            if room < 0:  # checked before any buffer is put in shared memory
                raise _too_large(addr, limit - room, limit)
            shm = conn.share(bufs)
            inline = [b for b, s in zip(bufs, shm) if not s] if shm else bufs
        else:
            lengths, shm, inline, room = _NO_BUFS, None, bufs, limit
        try:
            if seq or not sequenced:
                data = encode(msg, seq, lengths, shm)
                if len(data) > room:
                    raise _too_large(addr, limit - room + len(data), limit)
                if conn is shared:
                    conn.send(frame_iov(data, inline))
                else:
                    self._send_off_shared(conn, shared, frame_iov(data, inline), fut)
                return
            with self._lock:
                n = self._seq_out.get(addr, 0) + 1
                data = encode(msg, n, lengths, shm)
                if len(data) > room:  # before the sequence number is taken: the peer waits for none
                    raise _too_large(addr, limit - room + len(data), limit)
                self._seq_out[addr] = n
                if conn is shared:
                    conn.send(frame_iov(data, inline))
                else:
                    self._send_off_shared(conn, shared, frame_iov(data, inline), fut)
        except ConnectionError as exc:
            dead = self._dead.get(addr)
            if dead:
                raise SupervisionError.proc_failed(f"on proc {addr}", dead) from exc
            raise ConnectError(f"cannot reach {addr}: {exc}") from exc

    @staticmethod
    def _send_off_shared(conn: Any, shared: Any, iov: list[Any], fut: Any) -> None:
        """Send ``iov`` on a direct link, or on the shared link ``shared`` when the direct one
        is closed (the frame carries the same sequence number either way, so order holds and
        the shared link's failure reporting, such as a proc's exit status, applies)."""
        try:
            conn.send(iov)
        except ConnectionError:
            if fut is not None:
                fut._direct = None  # its reply comes on the shared link: the loop delivers it
            shared.send(iov)

    def begin_call(self, reply_addr: str) -> None:
        """The calling thread starts handling a call answered to ``reply_addr``: when that is a
        caller's direct link, everything this thread sends to that caller until it answers goes
        on that link, in order before the answer (the endpoint's printed lines, its port
        messages); see :meth:`_direct_route`. A thread handling a call to a sync actor calls it."""
        if self._direct_in:
            self._direct_tl.handling = reply_addr if _DIRECT_MARK in reply_addr else None

    def _direct_route(self, addr: str) -> tuple[str, Any]:
        """Where a message to ``addr`` goes on a process that answers on direct links:
        ``(address, direct link or None)``. The answer to a call that came on a caller's direct
        link goes back on it only from the thread handling that call (:meth:`begin_call`), and
        then so does everything that thread sent to that caller before it; an answer from any
        other thread (an async actor's loop, a refusal) takes the caller's shared link, which
        the caller also reads, so nothing it sent earlier there is overtaken."""
        handling = getattr(self._direct_tl, "handling", None)
        if _DIRECT_MARK in addr:
            if handling == addr:
                self._direct_tl.handling = None  # the answer is the last frame on that link
                link = self._out.get(addr)
                if link is not None and not link.closed:
                    return addr, None
            return addr.split(_DIRECT_MARK, 1)[0], None
        if handling is not None and handling.split(_DIRECT_MARK, 1)[0] == addr:
            link = self._out.get(handling)
            if link is not None and not link.closed:
                return addr, link
        return addr, None

    def _direct_link(self, addr: str) -> _DirectLink | None:
        """The calling thread's direct link to ``addr``, made at its second call there; None
        where calls take the shared link (the first call of this thread to ``addr``, an event
        loop runs on this thread, a non-Unix peer, the link was handed to the loop or is
        closed, too many direct links).

        The first call takes the shared link so that a one-off call costs no dial, and so that
        a peer which ends at once (a proc exiting during start) is reported by the shared
        link's supervision, with its exit status, rather than by a failed dial."""
        if asyncio._get_running_loop() is not None:  # no exception when there is none
            return None
        links: dict[str, Any] | None = getattr(self._direct_tl, "links", None)
        if links is None:
            links = self._direct_tl.links = {}
        d = links.get(addr, _NOT_YET)
        if d is _NOT_YET:
            links[addr] = _FIRST_CALL
            return None
        if d is _FIRST_CALL:
            d = links[addr] = self._open_direct(addr)
        if d is None or d.handed or d.link.closed:
            return None
        return d  # type: ignore[no-any-return]

    def _open_direct(self, addr: str) -> _DirectLink | None:
        tr = self.transport
        settings = getattr(tr, "settings", None)
        if (
            not addr.startswith("unix:") or settings is None or getattr(tr, "capture", None) is not None
            or len(self._direct_all) >= _DIRECT_MAX or self._closed
        ):
            return None  # (a frame capture records the transport's own links only)
        from .._transport.address import parse_address
        from .._transport.auth import dial_handshake_blocking
        from .._transport.connection import SocketLink

        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            # bounded well below the connect timeout: call_one() must not wait for a busy peer
            sock.settimeout(min(settings.connect_timeout_s, _DIRECT_DIAL_S))
            sock.connect(parse_address(addr)[1])
            if getattr(tr, "authenticates_unix", False):
                dial_handshake_blocking(sock, tr.token)  # type: ignore[attr-defined]  # a SocketTransport
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, settings.socket_buffer_bytes)
        except Exception as exc:  # the shared link reports an unreachable peer
            log.debug("no direct link to %s: %s", addr, exc)
            sock.close()
            return None
        link = SocketLink(
            self.loop, self._on_frame, self._direct_closed, settings, sock=sock, peer=addr,
            shm_budget=getattr(tr, "shm_budget", None),
        )
        link.state["direct"] = True
        hello = Envelope.new_message()
        hello.kind = Kind.HELLO
        hello.origin = self.addr
        hello.endpoint = _DIRECT_HELLO
        try:
            link.send(encode_frame(hello, []))
        except ConnectionError:
            return None
        d = _DirectLink(self, link)
        with self._lock:
            self._direct_all.add(d)
        return d

    def _direct_closed(self, link: Link, exc: BaseException | None) -> None:
        with self._lock:
            for d in [d for d in self._direct_all if d.link is link]:
                self._direct_all.discard(d)
                d.handed = True
                d.release()

    def send_control(
        self, addr: str, op: ControlOp, *, actor: str = "", payload: Any = b"", bufs: list[Any] | None = None,
        reply_port: int = 0, kind: Kind = Kind.CONTROL, sequenced: bool = True,
    ) -> None:
        """Send a runtime control operation ``op`` to ``addr`` (see :meth:`send` for errors)."""
        env = Envelope.new_message()
        env.kind = kind
        env.endpoint = op
        env.actor = actor
        env.payload = payload
        env.origin = self.addr
        if reply_port:
            env.replyAddr = self.addr
            env.replyPort = reply_port
        self.send(addr, env, bufs or [], sequenced=sequenced)

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
        """Register ``sink`` under a new port id of this process."""
        pid = next(self._port_ids)
        self.sinks[pid] = sink
        return pid

    def close_port(self, port: int) -> None:
        self.sinks.pop(port, None)

    # -- receiving -----------------------------------------------------------------------------
    def _on_frame(self, conn: Link, env: Any, bufs: list[memoryview]) -> None:
        if self._owner_only and env.endpoint in self._owner_only and env.kind == _CONTROL and conn is not self._first_incoming:
            log.error("dropped %r from %s: only this proc's owner may ask for it", env.endpoint, conn.peer or "a peer")
            return
        seq = env.seq
        if self._direct_in and conn in self._direct_in and env.kind == _CALL and env.replyAddr == env.origin and not env.flags:
            env.replyAddr = self._direct_in[conn]  # its result goes back on the caller's own link
        if seq:
            origin = env.origin
            expected = self._seq_in.get(origin, 1)
            if seq != expected:
                if seq > expected:
                    self._hold(conn, origin, seq, env, bufs)
                return
            self._seq_in[origin] = seq + 1
            self._dispatch(env, bufs)
            if origin in self._held or origin in self._skip:
                self._release(origin)
            return
        if env.kind == _HELLO:
            if "origin" not in conn.state:
                conn.state["origin"] = env.origin
                if env.endpoint == _DIRECT_HELLO and not conn.outgoing:
                    key = f"{env.origin}{_DIRECT_MARK}{next(self._direct_ids)}"
                    self._direct_in[conn] = key
                    with self._lock:
                        self._out[key] = conn
            return
        self._dispatch(env, bufs)

    def _hold(self, conn: Link, origin: str, seq: int, env: Any, bufs: list[memoryview]) -> None:
        """Keep a frame that arrived ahead of its origin's sequence, within the process-wide
        bounds (every origin together: a peer cannot multiply them by claiming many origins)."""
        size = len(env.payload) + sum(b.nbytes for b in bufs)
        if self._held_frames + 1 > self.limits.max_held_frames or self._held_total + size > self.limits.max_held_bytes:
            log.error(
                "closing the link from %s: %d frames (%d bytes) already wait for sequence gaps (origin %s waits for %d)",
                conn.peer or "peer", self._held_frames, self._held_total, origin, self._seq_in.get(origin, 1),
            )
            conn.close(None)
            return
        held = self._held.setdefault(origin, {})
        if seq in held:
            return  # a duplicate: the first copy is kept
        held[seq] = (env, bufs)
        self._held_bytes[origin] = self._held_bytes.get(origin, 0) + size
        self._held_frames += 1
        self._held_total += size

    def _release(self, origin: str) -> None:
        """Deliver the held frames (and pass skipped numbers) that are now in sequence."""
        held = self._held.get(origin, {})
        skip = self._skip.get(origin, set())
        nxt = self._seq_in.get(origin, 1)
        while True:
            if nxt in held:
                e, b = held.pop(nxt)
                size = len(e.payload) + sum(x.nbytes for x in b)
                self._held_bytes[origin] = self._held_bytes.get(origin, 0) - size
                self._held_frames -= 1
                self._held_total -= size
                self._seq_in[origin] = nxt + 1
                self._dispatch(e, b)
            elif nxt in skip:
                skip.discard(nxt)
                self._seq_in[origin] = nxt + 1
            else:
                break
            nxt += 1
        if not held:
            self._held.pop(origin, None)
            self._held_bytes.pop(origin, None)
        for s in [s for s in skip if s < nxt]:
            skip.discard(s)
        if not skip:
            self._skip.pop(origin, None)

    def _skip_lost(self, via: collections.deque[tuple[str, int]]) -> None:
        """A forwarder died: tell each destination below it which numbers it will never see."""
        by_dest: dict[str, list[int]] = {}
        for dest, seq in via:
            by_dest.setdefault(dest, []).append(seq)
        for dest, seqs in by_dest.items():
            if dest in self._dead:
                continue
            if dest == self.addr:
                continue
            try:
                payload, _ = dumps(seqs)
                self.send_control(dest, ControlOp.SKIP, payload=payload, sequenced=False)
            except Exception as exc:
                log.warning("cannot tell %s to skip messages lost with a forwarder: %s", dest, exc)

    def _on_skip(self, env: Any, bufs: list[memoryview]) -> None:
        origin = env.origin
        try:
            seqs = loads(env.payload, bufs)
            wanted = {int(s) for s in seqs}
        except Exception as exc:
            log.error("bad skip list from %s: %s", origin, exc)
            return
        expected = self._seq_in.get(origin, 1)
        wanted = {s for s in wanted if s >= expected}
        if wanted:
            self._skip.setdefault(origin, set()).update(wanted)
            self._release(origin)

    def _dispatch(self, env: Any, bufs: list[memoryview]) -> None:
        kind = env.kind
        if kind == _CALL:
            self._on_call(env, bufs)
        elif kind == _REPLY or kind == _PORT:
            sink = self.sinks.get(env.port)
            if sink is not None:
                sink.deliver(env, bufs)
        elif kind == _CONTROL or kind == _SUPERVISION:
            handler = self._control.get(env.endpoint)
            if handler is None:
                log.error("unknown control operation %r from %s", env.endpoint, env.origin)
            else:
                handler(env, bufs)

    def close(self) -> None:
        """Close the listener and every link; call on the loop thread."""
        self._closed = True
        self.heartbeats.close()
        with self._lock:
            direct = list(self._direct_all)
            self._direct_all.clear()
        for d in direct:
            d.close()
        self.transport.close()

    def __repr__(self) -> str:
        return f"<Router {self.name!r} addr={self.addr!r} peers={len(self._out)} ports={len(self.sinks)} dead={len(self._dead)}>"


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


__all__ += ["ConnectError"]


def _too_large(addr: str, size: int, limit: int) -> SupervisionError:
    return SupervisionError(
        f"a message of {size} bytes to {addr} is larger than the frame limit of {limit} bytes "
        "(settings codec_max_frame_length / max_frame_bytes); it was not sent"
    )
