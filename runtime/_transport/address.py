"""Addresses (``unix:/path``, ``tcp:HOST:PORT``): parsing, binding, naming and socket options."""

from __future__ import annotations

import socket
from typing import Any

__all__ = ["address_of", "bind_listener", "from_url", "parse_address", "tune_socket"]


def parse_address(addr: str) -> tuple[int, Any]:
    """``(family, sockaddr)`` of ``unix:/path`` or ``tcp:host:port`` (IPv6 hosts may be bracketed).

    Raises:
        ValueError: not one of the two forms.
    """
    if addr.startswith("unix:"):
        if len(addr) == 5:
            raise ValueError(f"bad unix address {addr!r}; expected unix:/path")
        return socket.AF_UNIX, addr[5:]
    if addr.startswith("tcp:"):
        host, _, port = addr[4:].rpartition(":")
        if not host or not port.isdigit() or int(port) > 65535:
            raise ValueError(f"bad tcp address {addr!r}; expected tcp:HOST:PORT")
        return socket.AF_INET6 if ":" in host else socket.AF_INET, (host.strip("[]"), int(port))
    raise ValueError(f"bad address {addr!r}; expected unix:/path or tcp:HOST:PORT")


def from_url(url: str) -> str:
    """Our address form of a Monarch-style URL: ``tcp://HOST:PORT`` -> ``tcp:HOST:PORT``,
    ``ipc://PATH`` / ``unix://PATH`` -> ``unix:PATH``; ``tcp:``/``unix:`` addresses pass as they are.

    Raises:
        ValueError: none of these forms (checked by :func:`parse_address`).
    """
    url = url.strip()
    for scheme, ours in (("tcp://", "tcp:"), ("ipc://", "unix:"), ("unix://", "unix:")):
        if url.startswith(scheme):
            url = ours + url[len(scheme) :]
            break
    parse_address(url)
    return url


def split_alias(address: str) -> tuple[str, str | None]:
    """``(bind, dial)`` of Monarch's alias address ``DIAL_TO@BIND_TO``
    (``tcp://10.0.0.2:26600@tcp://0.0.0.0:26600``: listen on the wildcard, be reached at the
    first); the reverse order is taken where only its first part is a wildcard
    (``tcp://0.0.0.0:0@tcp://10.0.0.2:0``). A plain address is ``(address, None)``.
    """
    if "@" not in address:
        return address, None
    first, second = (part.strip() for part in address.split("@", 1))
    if _is_wildcard(first) and not _is_wildcard(second):
        return first, second
    return second, first


def _is_wildcard(url: str) -> bool:
    try:
        family, sockaddr = parse_address(from_url(url))
    except ValueError:
        return False
    return family != socket.AF_UNIX and sockaddr[0] in ("0.0.0.0", "::", "")


def bind_listener(addr: str, backlog: int = 512) -> socket.socket:
    """A bound, listening socket for ``addr`` (``tcp:HOST:0`` picks a free port).

    Raises:
        ValueError: a malformed address.
        OSError: it cannot be bound.
    """
    family, sockaddr = parse_address(addr)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if family != socket.AF_UNIX:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(sockaddr)
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock


def address_of(sock: socket.socket) -> str:
    """The ``unix:``/``tcp:`` address a listening socket is bound to."""
    if sock.family == socket.AF_UNIX:
        name = sock.getsockname()
        return "unix:" + (name.decode() if isinstance(name, bytes) else name)
    host, port = sock.getsockname()[:2]
    return f"tcp:[{host}]:{port}" if ":" in host else f"tcp:{host}:{port}"


def tune_socket(sock: socket.socket, *, buffer_bytes: int, peer_timeout_s: float) -> None:
    """Large socket buffers; on TCP also ``TCP_NODELAY`` and kernel heartbeats.

    Heartbeats: keepalive probes every second after one idle second, and unacknowledged data,
    both bounded by ``peer_timeout_s``; a lost peer then ends the connection like any EOF.
    Options the platform lacks are skipped.
    """
    for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, opt, buffer_bytes)
        except OSError:
            pass
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    probes = max(1, int(peer_timeout_s) - 1)
    for level, opt, value in (
        (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPIDLE", 0), 1),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPINTVL", 0), 1),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPCNT", 0), probes),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_USER_TIMEOUT", 0), int(peer_timeout_s * 1000)),
    ):
        if opt:
            try:
                sock.setsockopt(level, opt, value)
            except OSError:
                pass
