"""The socket transport: ``unix:`` and ``tcp:`` links behind the ``base.Transport`` seam.

Every connection is mutually authenticated with the cluster token (``auth.py``) before a single
frame byte is read or written: TCP always, Unix too whenever the transport has a token (every
runtime does, ``TransportSettings.authenticate_unix``), so a local process that can reach a socket
path still cannot speak without the job's token. With a :class:`~monarch._transport.tls.TlsConfig`
(``MONARCH_TLS_*`` by default), every TCP link runs over mutual TLS first, the token handshake
inside it (``tls.py``); Unix links stay plain. Frames are bounded and validated on every link.
Connections still in a handshake (token or TLS) are capped separately (``max_handshaking``) and
each is dropped after ``auth_timeout_s``.
Dialing never blocks: :meth:`SocketTransport.connect` returns a link at once and dials on the
event loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable
from typing import Any

from .._core.errors import ConnectError, ProtocolError
from .address import address_of, bind_listener, parse_address, tune_socket
from .auth import authenticate_dialer, authenticate_listener
from .base import CloseHandler, FrameHandler, Link, TransportSettings
from .capture import FrameCapture
from .connection import SocketLink
from .shm import ShmBudget
from .tls import TlsConfig, TlsLink, TlsSession, tls_accept, tls_dial, tls_from_env

__all__ = ["DEFAULT_MAX_HANDSHAKING", "FROM_ENV", "SocketListening", "SocketTransport"]

log = logging.getLogger("monarch.transport")

DEFAULT_MAX_HANDSHAKING = 256
"""Accepted connections that may be in their handshake at once; more are refused at accept."""


class _FromEnv:
    def __repr__(self) -> str:
        return "FROM_ENV"


FROM_ENV: Any = _FromEnv()
"""``SocketTransport(tls=FROM_ENV)`` (the default): the ``MONARCH_TLS_*`` configuration."""


class SocketListening:
    """A listening socket of a :class:`SocketTransport` (implements ``base.Listening``)."""

    def __init__(
        self, transport: SocketTransport, sock: socket.socket, on_link: Callable[[Link], None]
    ) -> None:
        self._transport = transport
        self._on_link = on_link
        self.sock = sock
        sock.setblocking(False)
        self.address = address_of(sock)
        self.closed = False
        self.refused = 0
        self.refused_handshaking = (
            0  # refused because max_handshaking connections were in a handshake
        )
        self.accepted_total = 0  # connections accepted so far (their accept order)
        transport.loop.add_reader(sock.fileno(), self._on_readable)

    def _on_readable(self) -> None:
        t = self._transport
        for _ in range(64):
            try:
                conn, _peer = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.error("accept failed on %s: %s", self.address, exc)
                return
            if t.accepted_count >= t.settings.max_connections:
                conn.close()
                self.refused += 1
                if self.refused in (1, 10, 100) or self.refused % 1000 == 0:  # not one line each
                    log.error(
                        "refused a connection on %s: %d connections are open (max_connections); %d refused so far",
                        self.address,
                        t.accepted_count,
                        self.refused,
                    )
                continue
            if conn.family == socket.AF_UNIX and not t.authenticates_unix:
                t.accepted_count += 1
                index = self.accepted_total
                self.accepted_total += 1
                t._accepted(conn, "unix peer", self._on_link, index)
                continue
            if t.handshaking >= t.max_handshaking:
                conn.close()
                self.refused_handshaking += 1
                if self.refused_handshaking in (1, 10, 100) or self.refused_handshaking % 1000 == 0:
                    log.error(
                        "refused a connection on %s: %d connections are in their handshake (max_handshaking); %d refused so far",
                        self.address,
                        t.handshaking,
                        self.refused_handshaking,
                    )
                continue
            t.accepted_count += 1  # counted from accept, so handshakes in progress count too
            t.handshaking += 1
            index = self.accepted_total
            self.accepted_total += 1
            t.loop.create_task(self._authenticate(conn, index))

    async def _authenticate(self, conn: socket.socket, index: int) -> None:
        t = self._transport
        conn.setblocking(False)
        unix = conn.family == socket.AF_UNIX
        peer = "unix peer" if unix else "tcp peer"
        session: TlsSession | None = None
        try:
            if not unix:
                peer = "tcp:{}:{}".format(*conn.getpeername()[:2])
            if not unix and t.tls is not None:
                session = await tls_accept(t.loop, conn, t.tls, t.token, t.settings.auth_timeout_s)
            else:
                await authenticate_listener(t.loop, conn, t.token, t.settings.auth_timeout_s)
        except (OSError, ProtocolError, TimeoutError) as exc:
            log.error("rejected a connection from %s: %s", peer, str(exc) or type(exc).__name__)
            conn.close()
            t.accepted_count -= 1
            return
        finally:
            t.handshaking -= 1
        if self.closed:
            conn.close()
            t.accepted_count -= 1
            return
        t._accepted(conn, peer, self._on_link, index, session)

    def close(self) -> None:
        """Stop accepting; a ``unix:`` socket path is removed."""
        if self.closed:
            return
        self.closed = True
        try:
            self._transport.loop.remove_reader(self.sock.fileno())
        except (OSError, ValueError, RuntimeError):
            pass
        path = self.address[5:] if self.address.startswith("unix:") else None
        self.sock.close()
        if path:
            try:
                os.unlink(path)
            except OSError:
                pass

    def __repr__(self) -> str:
        return f"<SocketListening {self.address!r} closed={self.closed}>"


class SocketTransport:
    """Unix and TCP links for one event loop (implements ``base.Transport``).

    Args:
        loop: the event loop that runs every link's reads, writes and handlers.
        on_frame: called per received frame, on the loop thread (see ``base.FrameHandler``).
        on_close: called once per link when it ends, on the loop thread.
        token: the cluster token TCP peers must share (both directions are proved); None
            refuses every TCP connection, incoming and outgoing, unless ``tls`` is set (mutual
            TLS then authenticates them alone).
        settings: every limit and timeout (``TransportSettings()`` for the defaults).
        tls: mutual TLS for every TCP link; None: plain TCP; :data:`FROM_ENV` (the default):
            ``tls.tls_from_env()`` (``MONARCH_TLS_CA`` / ``_CERT`` / ``_KEY``).
        max_handshaking: accepted connections in their handshake at once; beyond it new ones
            are refused at accept (closed, reason logged).

    Raises:
        ValueError: ``tls`` is :data:`FROM_ENV` and the ``MONARCH_TLS_*`` files are incomplete
            or invalid.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        on_frame: FrameHandler,
        on_close: CloseHandler,
        *,
        token: bytes | None,
        settings: TransportSettings,
        tls: TlsConfig | None = FROM_ENV,
        max_handshaking: int = DEFAULT_MAX_HANDSHAKING,
    ) -> None:
        if max_handshaking <= 0:
            raise ValueError("max_handshaking must be positive")
        self.loop = loop
        self.token = token
        self.settings = settings
        self.tls: TlsConfig | None = tls_from_env() if tls is FROM_ENV else tls
        self.max_handshaking = max_handshaking
        self.handshaking = 0
        self._on_frame = on_frame
        self._on_close = on_close
        self.shm_budget = ShmBudget(settings.shm_total_max_bytes)
        self.accepted_count = 0
        self._links: set[SocketLink] = set()
        self._listening: list[SocketListening] = []
        # decided once: with capture off, links are built and run exactly as without it
        self.capture = (
            FrameCapture(settings.capture_frames_dir) if settings.capture_frames_dir else None
        )

    # -- making links ---------------------------------------------------------------------
    def _new_link(
        self,
        sock: socket.socket | None,
        peer: str,
        outgoing: bool,
        tls: bool = False,
        session: TlsSession | None = None,
    ) -> SocketLink:
        on_close = self._closed if outgoing else self._accepted_closed
        if tls:
            link: SocketLink = TlsLink(
                self.loop,
                self._on_frame,
                on_close,
                self.settings,
                sock=sock,
                peer=peer,
                outgoing=outgoing,
                session=session,
            )
        else:
            link = SocketLink(
                self.loop,
                self._on_frame,
                on_close,
                self.settings,
                sock=sock,
                peer=peer,
                outgoing=outgoing,
                shm_budget=self.shm_budget,
            )
        self._links.add(link)
        if self.capture is not None:
            self.capture.attach(link)
        return link

    def _tune(self, sock: socket.socket) -> None:
        tune_socket(
            sock,
            buffer_bytes=self.settings.socket_buffer_bytes,
            peer_timeout_s=self.settings.peer_timeout_s,
        )

    def _accepted(
        self,
        sock: socket.socket,
        peer: str,
        on_link: Callable[[Link], None],
        index: int,
        session: TlsSession | None = None,
    ) -> None:
        self._tune(sock)
        link = self._new_link(sock, peer, outgoing=False, tls=session is not None, session=session)
        link.state["accept_index"] = index  # the order of accept(), not of authentication
        try:
            on_link(link)
        except Exception:
            log.exception("on_link failed for %s", peer)
            link.close()
            return
        link.start_reading()

    def listen(
        self, target: str | socket.socket, on_link: Callable[[Link], None]
    ) -> SocketListening:
        """Listen on ``target`` (an address to bind, or a bound listening socket); loop thread.

        ``on_link(link)`` runs on the loop thread for each incoming link, after authentication
        on TCP; frames are read only after it returns.

        Raises:
            ValueError: a malformed address.
            OSError: the address cannot be bound.
        """
        sock = bind_listener(target) if isinstance(target, str) else target
        lst = SocketListening(self, sock, on_link)
        self._listening.append(lst)
        if self.capture is not None:
            self.capture.listening(lst.address)
        return lst

    def connect(self, addr: str) -> SocketLink:
        """A link to ``addr``, dialed and authenticated on the event loop; returns at once.

        Any thread. Frames sent before the link is up are queued (bounded by
        ``settings.max_connect_queue_bytes``). A failure closes the link through ``on_close``
        with a :class:`ConnectError` naming ``addr``.

        Raises:
            ValueError: a malformed address.
        """
        family, sockaddr = parse_address(addr)
        link = self._new_link(
            None, addr, outgoing=True, tls=self.tls is not None and family != socket.AF_UNIX
        )
        if _on_loop_thread(self.loop):
            self.loop.create_task(self._dial(link, addr, family, sockaddr))
        else:
            asyncio.run_coroutine_threadsafe(self._dial(link, addr, family, sockaddr), self.loop)
        return link

    async def _dial(self, link: SocketLink, addr: str, family: int, sockaddr: Any) -> None:
        tcp = family != socket.AF_UNIX
        if tcp and self.token is None and self.tls is None:
            link.close(
                ConnectError(
                    f"cannot connect to {addr}: a TCP peer needs a cluster token or TLS and this process has neither"
                )
            )
            return
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)

        async def steps() -> TlsSession | None:
            async with asyncio.timeout(self.settings.connect_timeout_s):
                await self.loop.sock_connect(sock, sockaddr)
                if tcp and self.tls is not None:
                    return await tls_dial(
                        self.loop, sock, self.tls, self.token, self.settings.connect_timeout_s
                    )
                if self.token is not None and (tcp or self.settings.authenticate_unix):
                    await authenticate_dialer(
                        self.loop, sock, self.token, self.settings.connect_timeout_s
                    )
            return None

        await self._establish(link, sock, steps, f"cannot connect to {addr}")

    def adopt(self, addr: str, sock: socket.socket) -> SocketLink:
        """A link over an already-connected socket, known as ``addr``; reading starts on the
        loop (any thread). With a token on a Unix socket, the dialer's side of the handshake runs
        first (in the background; what is sent meanwhile is queued)."""
        if self.authenticates_unix and sock.family == socket.AF_UNIX and self.token is not None:
            link = self._new_link(None, addr, outgoing=True)
            sock.setblocking(False)
            coro = self._adopt_authenticated(link, addr, sock, self.token)
            if _on_loop_thread(self.loop):
                self.loop.create_task(coro)
            else:
                asyncio.run_coroutine_threadsafe(coro, self.loop)
            return link
        self._tune(sock)
        link = self._new_link(sock, addr, outgoing=True)
        if _on_loop_thread(self.loop):
            link.start_reading()
        else:
            self.loop.call_soon_threadsafe(link.start_reading)
        return link

    @property
    def authenticates_unix(self) -> bool:
        """Unix links run the token handshake (a token is set and ``authenticate_unix``)."""
        return self.token is not None and self.settings.authenticate_unix

    async def _adopt_authenticated(
        self, link: SocketLink, addr: str, sock: socket.socket, token: bytes
    ) -> None:
        async def steps() -> None:
            await authenticate_dialer(self.loop, sock, token, self.settings.connect_timeout_s)

        await self._establish(link, sock, steps, f"cannot authenticate {addr}")

    async def _establish(
        self, link: SocketLink, sock: socket.socket, steps: Any, what: str
    ) -> None:
        """Run ``steps()`` (connect and/or authenticate ``sock``), then give ``link`` its socket;
        any failure closes the socket and ends ``link`` with a ``ConnectError`` saying ``what``."""
        try:
            session = await steps()
        except (OSError, ProtocolError, TimeoutError, ConnectError) as exc:
            sock.close()
            why = "timed out" if isinstance(exc, TimeoutError) else str(exc)
            err = exc if isinstance(exc, ConnectError) else ConnectError(f"{what}: {why}")
            if exc is not err:
                err.__cause__ = exc
            link.close(err)
            return
        except BaseException as exc:  # cancelled (loop shutting down): the link must still end
            sock.close()
            link.close(ConnectError(f"{what}: {type(exc).__name__}"))
            raise
        if link.closed:
            sock.close()
            return
        self._tune(sock)
        if session is not None:
            link.attach_tls(sock, session)  # type: ignore[attr-defined]  # a TlsLink: made for this address
        else:
            link.attach(sock)

    # -- ending ---------------------------------------------------------------------------
    def flushed(self) -> bool:
        """Every link has written what was sent on it (links still being dialed are not);
        closed links count as flushed (any thread: a snapshot, for a process about to exit)."""
        return all(link.flushed for link in list(self._links))

    def _closed(self, link: Any, exc: BaseException | None) -> None:
        self._links.discard(link)
        self._on_close(link, exc)

    def _accepted_closed(self, link: Any, exc: BaseException | None) -> None:
        self.accepted_count -= 1
        self._closed(link, exc)

    def close(self) -> None:
        """Close every listener and link (loop thread); each link's ``on_close`` runs."""
        for lst in self._listening:
            lst.close()
        self._listening.clear()
        for link in list(self._links):
            link.close()

    def __repr__(self) -> str:
        return (
            f"<SocketTransport links={len(self._links)} accepted={self.accepted_count} tls={self.tls is not None} "
            f"listening={[lst.address for lst in self._listening]}>"
        )


def _on_loop_thread(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False
