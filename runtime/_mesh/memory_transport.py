"""An in-memory transport: ``mem:NAME`` links between runtimes of one OS process, for tests.

It implements the ``base.Transport`` seam the way :class:`~monarch._transport.sockets.SocketTransport`
does, minus the sockets: links made by :meth:`MemoryTransport.connect` exist at once and are
paired with the listener asynchronously (an unknown address closes the link with a
:class:`~monarch._core.errors.ConnectError`); every frame is encoded to bytes on send and decoded
by the real :class:`~monarch._transport.frame.FrameDecoder` on the receiving loop, so the envelope
codec and the frame bounds are exercised; delivery runs on the receiver's event loop through
``call_soon_threadsafe``, in FIFO order per link; closing one end delivers an end of stream to
the other after the frames already sent. Model: grpclib's in-memory test channel.

A :class:`MemoryNetwork` connects the transports and injects faults, by process address: a
*frozen* process (as if SIGSTOPped) neither receives nor sends until thawed, a *partition* drops
every frame between two processes, *sever* resets their links, *kill* makes a process vanish
(its links end, its address refuses connections).

This module lives under ``_mesh`` but imports only ``_core`` and ``_transport``.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from .._core.errors import ConnectError, ProtocolError
from .._transport.base import CloseHandler, FrameHandler, Link, TransportSettings
from .._transport.frame import FrameDecoder

__all__ = ["MemoryLink", "MemoryListening", "MemoryNetwork", "MemoryTransport"]

log = logging.getLogger("monarch.transport.memory")

_EOF = object()  # an inbox entry: the peer closed; everything before it is delivered first
_PREFIX = "mem:"


def _check_address(addr: object) -> str:
    if isinstance(addr, socket.socket):
        raise TypeError("the in-memory transport has no sockets: give it a 'mem:NAME' address")
    if not isinstance(addr, str):
        raise TypeError(f"address must be a 'mem:NAME' string, got {type(addr).__name__}")
    if not addr.startswith(_PREFIX):
        raise ValueError(f"not an in-memory address (want 'mem:NAME'): {addr!r}")
    return addr


def _as_bytes(iov: list[Any]) -> bytes:
    """One contiguous copy of a frame's iovecs (the sender may reuse its buffers afterwards)."""
    parts = []
    for b in iov:
        if type(b) is memoryview and (b.format != "B" or b.ndim != 1):
            b = b.cast("B")
        parts.append(b)
    return b"".join(parts)


class MemoryLink:
    """One end of an in-memory connection (implements ``base.Link``).

    Attributes:
        peer: the address of the other end's process (``mem:NAME``; ``mem:?`` for an
            accepted link whose dialer listens nowhere).
        closed: True once this end is closed.
        outgoing: True for the dialing end.
        state: the layer above's slot.
        sent_frames: frames given to :meth:`send` (counted even when a partition drops them).
    """

    def __init__(self, transport: MemoryTransport, peer: str, outgoing: bool) -> None:
        self.transport = transport
        self.peer = peer
        self.outgoing = outgoing
        self.closed = False
        self.state: dict[str, Any] = {}
        self.sent_frames = 0
        self.other: MemoryLink | None = None  # the far end, once paired
        self._lock = threading.Lock()
        self._connecting = outgoing
        self._queued: list[bytes] = []  # sent while still connecting
        self._queued_bytes = 0
        self._inbox: deque[Any] = deque()  # bytes or _EOF, filled by the far end
        self._accepted = True  # an accepted end starts False until on_link ran (see _dial)
        self._drain_scheduled = False
        self._close_reported = False
        st = transport.settings
        self._decoder = FrameDecoder(st.max_envelope_bytes, st.max_frame_bytes)

    @property
    def local(self) -> str:
        """The address of this end's process."""
        return self.transport.address

    # -- sending ---------------------------------------------------------------------------------
    def send(self, iov: list[Any]) -> None:
        """Queue one frame for the far end; any thread, never blocks.

        Raises:
            ConnectionResetError: this link is closed.
            ConnectionRefusedError: the link is still connecting and its queue holds
                ``max_connect_queue_bytes`` already.
        """
        data = _as_bytes(iov)
        with self._lock:
            if self.closed:
                raise ConnectionResetError(f"connection to {self.peer} is closed")
            self.sent_frames += 1
            if self._connecting:
                if self._queued_bytes + len(data) > self.transport.settings.max_connect_queue_bytes:
                    raise ConnectionRefusedError(f"connection to {self.peer} is not up yet and its queue is full")
                self._queued.append(data)
                self._queued_bytes += len(data)
                return
            other = self.other
        if other is not None and not self.transport.network.drops(self.local, self.peer):
            other._push(data)

    def share(self, bufs: list[Any]) -> list[int] | None:
        """Always None: in-memory links carry every buffer inline."""
        return None

    # -- receiving (the far end pushes, this end's loop drains) ---------------------------------
    def _push(self, item: Any) -> None:
        with self._lock:
            if self.closed:
                return
            self._inbox.append(item)
            if self._drain_scheduled:
                return
            self._drain_scheduled = True
        self._schedule(self._drain)

    def _schedule(self, fn: Callable[..., Any], *args: Any) -> None:
        try:
            self.transport.loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the receiving runtime's loop is closed: it is gone
            pass

    def _drain(self) -> None:
        """Deliver what arrived, in order (loop thread)."""
        net = self.transport.network
        with self._lock:
            self._drain_scheduled = False
            if not self._accepted or net.frozen(self.local, self.peer):
                return  # kept; the accept or the thaw drains again
            items = list(self._inbox)
            self._inbox.clear()
        for item in items:
            if self.closed:
                return
            if item is _EOF:
                self.close(None)
                return
            frames: list[tuple[Any, list[memoryview]]] = []
            try:
                self._decoder.feed(item, frames)
            except ProtocolError as exc:
                log.error("closing in-memory link from %s: %s", self.peer, exc)
                self._deliver(frames)
                self.close(exc)
                return
            if not self._deliver(frames):
                return

    def _deliver(self, frames: list[tuple[Any, list[memoryview]]]) -> bool:
        for env, bufs in frames:
            if self.closed:
                return False
            try:
                self.transport.on_frame(self, env, bufs)
            except ProtocolError as exc:
                log.error("closing in-memory link from %s: %s", self.peer, exc)
                self.close(exc)
                return False
            except Exception:
                log.exception("error while handling a frame from %s", self.peer)
        return True

    def _kick(self) -> None:
        """Drain again (after an accept or a thaw); any thread."""
        with self._lock:
            if self.closed or self._drain_scheduled or not self._inbox:
                return
            self._drain_scheduled = True
        self._schedule(self._drain)

    # -- pairing ---------------------------------------------------------------------------------
    def _connected(self, other: MemoryLink) -> None:
        """The dial succeeded: flush what was queued to the far end (loop thread)."""
        with self._lock:
            if self.closed:
                return
            self.other = other
            self._connecting = False
            queued, self._queued, self._queued_bytes = self._queued, [], 0
        drop = self.transport.network.drops(self.local, self.peer)
        for data in queued:
            if not drop:
                other._push(data)

    # -- closing ---------------------------------------------------------------------------------
    def close(self, exc: BaseException | None = None) -> None:
        """Close this end; the far end sees an end of stream after what was already sent.

        The close handler runs once, with ``exc``: at once on the loop thread, scheduled on it
        from any other thread.
        """
        if not _on_loop(self.transport.loop):
            self._schedule(self.close, exc)
            return
        with self._lock:
            self.closed = True
            self._inbox.clear()
            self._queued.clear()
            report = not self._close_reported
            self._close_reported = True
            other, self.other = self.other, None
        if other is not None:
            other._push(_EOF)
        if report:
            self.transport._link_closed(self, exc)

    def __repr__(self) -> str:
        state = "closed" if self.closed else "connecting" if self._connecting else "open"
        return f"<MemoryLink {self.local} -> {self.peer} {state} outgoing={self.outgoing} inbox={len(self._inbox)}>"


class MemoryListening:
    """A listening ``mem:`` address (implements ``base.Listening``)."""

    def __init__(self, transport: MemoryTransport, address: str, on_link: Callable[[Link], None]) -> None:
        self.transport = transport
        self.address = address
        self.on_link = on_link
        self.closed = False

    def close(self) -> None:
        """Stop accepting; links already made stay open."""
        if not self.closed:
            self.closed = True
            self.transport.network._unlisten(self)

    def __repr__(self) -> str:
        return f"<MemoryListening {self.address!r} closed={self.closed}>"


class MemoryTransport:
    """In-memory links for one event loop (implements ``base.Transport``).

    Args:
        loop: the event loop that runs this transport's handlers and deliveries.
        on_frame: called per received frame, on the loop thread (see ``base.FrameHandler``).
        on_close: called once per link when it ends, on the loop thread.
        network: the :class:`MemoryNetwork` this transport's addresses live in.
        settings: frame bounds (``max_envelope_bytes``, ``max_frame_bytes``) and the connect
            queue bound; None: the defaults. Socket-only settings are ignored.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        on_frame: FrameHandler,
        on_close: CloseHandler,
        *,
        network: MemoryNetwork,
        settings: TransportSettings | None = None,
    ) -> None:
        self.loop = loop
        self.on_frame = on_frame
        self._on_close = on_close
        self.network = network
        self.settings = settings or TransportSettings()
        self.links: set[MemoryLink] = set()
        self.listening: list[MemoryListening] = []
        self._anon = f"mem:?{next(network._ids)}"
        network._register(self)

    @property
    def address(self) -> str:
        """This transport's process address: its first listening address."""
        return self.listening[0].address if self.listening else self._anon

    def listen(self, target: str | socket.socket, on_link: Callable[[Link], None]) -> MemoryListening:
        """Listen on ``mem:NAME`` (``mem:`` alone: a fresh unique name).

        ``on_link(link)`` runs on the loop thread for each incoming link, before any of its
        frames is delivered.

        Raises:
            TypeError: ``target`` is a socket (this transport has none).
            ValueError: not a ``mem:`` address.
            OSError: the address is in use (``EADDRINUSE``).
        """
        addr = _check_address(target)
        if addr == _PREFIX:
            addr = f"mem:auto-{next(self.network._ids)}"
        lst = MemoryListening(self, addr, on_link)
        self.network._listen(lst)
        self.listening.append(lst)
        return lst

    def connect(self, addr: str) -> MemoryLink:
        """A link to ``addr``, paired with its listener on this loop; returns at once (any thread).

        Frames sent before the pairing are queued. An unknown, closed or killed address closes
        the link through the close handler with a :class:`ConnectError` naming ``addr``.

        Raises:
            ValueError: not a ``mem:`` address.
        """
        _check_address(addr)
        link = MemoryLink(self, addr, outgoing=True)
        self.links.add(link)
        if _on_loop(self.loop):
            self.loop.call_soon(self._dial, link)
        else:
            self.loop.call_soon_threadsafe(self._dial, link)
        return link

    def _dial(self, link: MemoryLink) -> None:
        if link.closed:
            return
        lst = self.network._listener(link.peer)
        if lst is None or self.network.is_killed(self.address):
            link.close(ConnectError(f"cannot connect to {link.peer}: nothing listens there"))
            return
        far = MemoryLink(lst.transport, self.address, outgoing=False)
        far._accepted = False
        far.other = link
        lst.transport.links.add(far)
        link._connected(far)
        far._schedule(lst.transport._accept, lst, far)

    def _accept(self, lst: MemoryListening, link: MemoryLink) -> None:
        if link.closed:
            return
        if lst.closed:
            link.close(None)
            return
        try:
            lst.on_link(link)
        except Exception:
            log.exception("on_link failed for %s", link.peer)
            link.close(None)
            return
        with link._lock:
            link._accepted = True
        link._kick()

    def adopt(self, addr: str, sock: socket.socket) -> Link:
        """Not supported: there are no sockets here.

        Raises:
            TypeError: always.
        """
        raise TypeError("the in-memory transport cannot adopt a socket")

    def _link_closed(self, link: MemoryLink, exc: BaseException | None) -> None:
        self.links.discard(link)
        self._on_close(link, exc)

    def close(self) -> None:
        """Close every listener and link (loop thread); each link's close handler runs."""
        for lst in self.listening:
            lst.close()
        for link in list(self.links):
            link.close()

    def __repr__(self) -> str:
        return f"<MemoryTransport {self.address!r} links={len(self.links)}>"


class MemoryNetwork:
    """The address space of :class:`MemoryTransport`\\ s, and fault injection by process address.

    Thread-safe. Every fault names processes by their listening address (``mem:NAME``).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._listeners: dict[str, MemoryListening] = {}
        self._frozen: set[str] = set()
        self._partitions: set[frozenset[str]] = set()
        self._killed: set[str] = set()
        self._ids = itertools.count(1)
        self._transports: list[MemoryTransport] = []

    def transport_factory(
        self, loop: asyncio.AbstractEventLoop, settings: TransportSettings | None = None
    ) -> Callable[[FrameHandler, CloseHandler], MemoryTransport]:
        """What ``Router``/``Runtime`` take as ``transport=``: a :class:`MemoryTransport` on ``loop``."""

        def make(on_frame: FrameHandler, on_close: CloseHandler) -> MemoryTransport:
            return MemoryTransport(loop, on_frame, on_close, network=self, settings=settings)

        return make

    # -- registry --------------------------------------------------------------------------------
    def _register(self, transport: MemoryTransport) -> None:
        with self._lock:
            self._transports.append(transport)

    def _listen(self, lst: MemoryListening) -> None:
        import errno

        with self._lock:
            if lst.address in self._listeners or lst.address in self._killed:
                raise OSError(errno.EADDRINUSE, f"address already in use: {lst.address}")
            self._listeners[lst.address] = lst

    def _unlisten(self, lst: MemoryListening) -> None:
        with self._lock:
            if self._listeners.get(lst.address) is lst:
                del self._listeners[lst.address]

    def _listener(self, addr: str) -> MemoryListening | None:
        with self._lock:
            if addr in self._killed:
                return None
            return self._listeners.get(addr)

    def addresses(self) -> list[str]:
        """Every address listened on now."""
        with self._lock:
            return sorted(self._listeners)

    def _links_between(self, a: str, b: str | None) -> list[MemoryLink]:
        with self._lock:
            transports = list(self._transports)
        out = []
        for t in transports:
            for link in list(t.links):
                ends = {link.local, link.peer}
                if a in ends and (b is None or b in ends):
                    out.append(link)
        return out

    # -- faults ----------------------------------------------------------------------------------
    def frozen(self, a: str, b: str) -> bool:
        """Whether frames between ``a`` and ``b`` are held because one of them is frozen."""
        return bool(self._frozen) and (a in self._frozen or b in self._frozen)

    def drops(self, a: str, b: str) -> bool:
        """Whether frames from ``a`` to ``b`` are dropped (a partition)."""
        return bool(self._partitions) and frozenset((a, b)) in self._partitions

    def is_killed(self, addr: str) -> bool:
        return addr in self._killed

    def freeze(self, addr: str) -> None:
        """The process at ``addr`` stops, as if SIGSTOPped: frames to and from it are held
        (in order) until :meth:`thaw`; its links stay open."""
        with self._lock:
            self._frozen.add(addr)

    def thaw(self, addr: str) -> None:
        """Undo :meth:`freeze`: held frames are delivered, in order."""
        with self._lock:
            self._frozen.discard(addr)
        for link in self._links_between(addr, None):
            link._kick()

    def partition(self, a: str, b: str) -> None:
        """Drop every frame between ``a`` and ``b`` (both ways) until :meth:`heal`; links stay up."""
        with self._lock:
            self._partitions.add(frozenset((a, b)))

    def heal(self, a: str, b: str) -> None:
        """Undo :meth:`partition` (frames dropped meanwhile stay lost)."""
        with self._lock:
            self._partitions.discard(frozenset((a, b)))

    def sever(self, a: str, b: str) -> None:
        """Reset every link between ``a`` and ``b``: both ends see an end of stream (each on
        its own loop); new connections may be made."""
        for link in self._links_between(a, b):
            link.close(None)

    def kill(self, addr: str) -> None:
        """The process at ``addr`` dies, as if SIGKILLed: its listener goes, its address refuses
        connections from now on, and every link to or from it ends (peers see an end of
        stream after what it had sent)."""
        with self._lock:
            self._killed.add(addr)
            self._frozen.discard(addr)
            lst = self._listeners.pop(addr, None)
        if lst is not None:
            lst.closed = True
        for link in self._links_between(addr, None):
            if link.local == addr:
                link.close(ConnectionResetError(f"{addr} was killed"))

    def __repr__(self) -> str:
        return (
            f"<MemoryNetwork listening={len(self._listeners)} frozen={sorted(self._frozen)} "
            f"partitions={len(self._partitions)} killed={sorted(self._killed)}>"
        )


def _on_loop(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False
