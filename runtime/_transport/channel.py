"""Compatibility names for the router until it moves to ``base.Transport`` / ``SocketTransport``.

The transport now lives in one-concept modules: ``address`` (addresses and socket options),
``auth`` (mutual TCP authentication), ``connection`` (the link: write queue and read path),
``shm`` (shared-memory segments), ``sockets`` (``SocketTransport``) and ``base`` (the
Protocols and ``TransportSettings``). The names below keep ``runtime/_mesh/router.py`` working
unchanged; they use the same code, so its fixes (mutual authentication, bounded shared memory,
sealed segments, no per-connection receive buffer) apply here too; the cap on accepted
connections (``TransportSettings.max_connections``) and the non-blocking dial exist only in
``SocketTransport`` (``dial`` here blocks, bounded by its timeout). This module, and its reading
of ``MONARCH_SHM`` and ``MONARCH_PEER_TIMEOUT_S``, goes away once the router builds a
``SocketTransport`` from ``monarch.config``.
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
from .auth import authenticate_listener, dial_handshake_blocking
from .base import TransportSettings
from .connection import SocketLink
from .shm import ShmBudget

__all__ = ["Connection", "Listener", "address_of", "bind_listener", "dial", "parse_address"]

log = logging.getLogger("monarch.transport")


def _legacy_settings(**overrides: Any) -> TransportSettings:
    """Settings from the two environment variables the transport used to read itself."""
    try:
        timeout = max(0.5, float(os.environ.get("MONARCH_PEER_TIMEOUT_S", "3")))
    except ValueError:
        timeout = 3.0
    return TransportSettings(
        peer_timeout_s=timeout, shm_enabled=os.environ.get("MONARCH_SHM", "1") != "0", **overrides
    )


_BUDGET: ShmBudget | None = None


def _budget() -> ShmBudget:
    global _BUDGET
    if _BUDGET is None:
        _BUDGET = ShmBudget(TransportSettings().shm_total_max_bytes)
    return _BUDGET


def peer_timeout_s() -> float:
    """``MONARCH_PEER_TIMEOUT_S`` (default 3 s, at least 0.5 s)."""
    return _legacy_settings().peer_timeout_s


def _tune(sock: socket.socket) -> None:
    st = _legacy_settings()
    tune_socket(sock, buffer_bytes=st.socket_buffer_bytes, peer_timeout_s=st.peer_timeout_s)


class Connection(SocketLink):
    """A :class:`SocketLink` with the old constructor: ``Connection(sock, loop, on_frame,
    on_close, max_envelope_bytes=, max_frame_bytes=, peer=)``, then ``start_reading()``."""

    def __init__(
        self,
        sock: socket.socket,
        loop: asyncio.AbstractEventLoop,
        on_frame: Callable[[Any, Any, list[memoryview]], None],
        on_close: Callable[[Any, BaseException | None], None],
        *,
        max_envelope_bytes: int,
        max_frame_bytes: int,
        peer: str = "",
    ) -> None:
        settings = _legacy_settings(max_envelope_bytes=max_envelope_bytes, max_frame_bytes=max_frame_bytes)
        super().__init__(loop, on_frame, on_close, settings, sock=sock, peer=peer, shm_budget=_budget())


def dial(addr: str, token: bytes | None, timeout_s: float = 10.0) -> socket.socket:
    """Connect to ``addr`` (blocking, bounded by ``timeout_s``); on TCP, authenticate mutually.

    Raises:
        ValueError: a malformed address.
        ConnectError: unreachable, refused, timed out, or either side's proof failed.
    """
    family, sockaddr = parse_address(addr)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout_s)
        sock.connect(sockaddr)
        if family != socket.AF_UNIX:
            if token is None:
                raise ConnectError(f"{addr} needs a cluster token (set MONARCH_CLUSTER_TOKEN)")
            dial_handshake_blocking(sock, token)
        _tune(sock)
        return sock
    except (OSError, ProtocolError) as exc:
        sock.close()
        raise ConnectError(f"cannot connect to {addr}: {exc}") from exc
    except BaseException:
        sock.close()
        raise


class Listener:
    """A listening socket whose accepted (and, on TCP, authenticated) sockets go to
    ``on_accept(sock, peer)`` on the loop thread.

    Args:
        addr: ``unix:/path`` or ``tcp:HOST:PORT`` (port 0 picks a free port; see ``address``).
        sock: an already-bound listening socket to use instead (e.g. inherited from a parent).
        token: the cluster token TCP peers must share; None refuses every TCP dialer.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        on_accept: Callable[[socket.socket, str], None],
        *,
        addr: str | None = None,
        sock: socket.socket | None = None,
        token: bytes | None = None,
    ) -> None:
        self.loop = loop
        self._on_accept = on_accept
        self._token = token
        if sock is None:
            if addr is None:
                raise ValueError("Listener needs addr or sock")
            sock = bind_listener(addr)
        self.sock = sock
        self.sock.setblocking(False)
        self.address = address_of(sock)
        loop.add_reader(sock.fileno(), self._on_readable)

    def _on_readable(self) -> None:
        for _ in range(64):
            try:
                conn, _peer = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.error("accept failed on %s: %s", self.address, exc)
                return
            if conn.family == socket.AF_UNIX:
                _tune(conn)
                self._on_accept(conn, "unix")
            else:
                self.loop.create_task(self._authenticate(conn))

    async def _authenticate(self, conn: socket.socket) -> None:
        conn.setblocking(False)
        peer = "tcp peer"
        try:
            peer = "{}:{}".format(*conn.getpeername()[:2])
            await authenticate_listener(self.loop, conn, self._token, 10.0)
        except (OSError, ProtocolError, TimeoutError) as exc:
            log.error("rejected TCP connection from %s: %s", peer, exc or type(exc).__name__)
            conn.close()
            return
        _tune(conn)
        self._on_accept(conn, peer)

    def close(self) -> None:
        try:
            self.loop.remove_reader(self.sock.fileno())
        except (OSError, ValueError, RuntimeError):
            pass
        path = self.address[5:] if self.address.startswith("unix:") else None
        self.sock.close()
        if path:
            try:
                os.unlink(path)
            except OSError:
                pass
