"""Mutual authentication of a TCP connection with the cluster token, before any frame.

Both sides prove they know the token; neither decodes a byte of the peer's frames first::

    listener -> dialer:   MAGIC (8 bytes) + nonce_l (32 random bytes)
    dialer   -> listener: nonce_d (32 random bytes) + HMAC-SHA256(token, "dialer" + nonce_l + nonce_d)
    listener -> dialer:   HMAC-SHA256(token, "listener" + nonce_l + nonce_d)

Each side checks the other's MAC with a constant-time compare; the listener answers only after the
dialer proved itself (it is no MAC oracle for strangers), and the role label keeps one side's
proof from being replayed as the other's. Every message has a fixed size and every wait a time
bound, so a silent or babbling peer costs at most ``timeout_s`` and 104 bytes.

The exchange runs over any byte stream: the raw socket, or a TLS session (``tls.py``), where it
runs inside TLS, after the handshake, when both TLS and a token are configured.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import socket
from typing import Protocol

from .._core.errors import ProtocolError

__all__ = [
    "MAGIC",
    "AsyncStream",
    "BlockingStream",
    "SocketStream",
    "authenticate_dialer",
    "authenticate_dialer_io",
    "authenticate_listener",
    "authenticate_listener_io",
    "dial_handshake_blocking",
]

MAGIC = b"MNRCHv2\x00"
_NONCE = 32
_MAC = 32
_CHALLENGE = len(MAGIC) + _NONCE


def _mac(token: bytes, role: bytes, nonce_l: bytes, nonce_d: bytes) -> bytes:
    return hmac.new(token, role + nonce_l + nonce_d, hashlib.sha256).digest()


def _check_challenge(challenge: bytes) -> bytes:
    if challenge[: len(MAGIC)] != MAGIC:
        raise ProtocolError("the listener does not speak the monarch authentication protocol")
    return challenge[len(MAGIC) :]


class AsyncStream(Protocol):
    """A byte stream on the event loop: a raw socket (:class:`SocketStream`) or a TLS session."""

    async def recv(self, n: int) -> bytes:
        """Up to ``n`` bytes; ``b""`` at the end of the stream."""
        ...

    async def sendall(self, data: bytes) -> None:
        """Write all of ``data``."""
        ...


class BlockingStream(Protocol):
    """A blocking byte stream: a ``socket.socket`` or a blocking TLS session."""

    def recv(self, n: int, /) -> bytes:
        """Up to ``n`` bytes; ``b""`` at the end of the stream."""
        ...

    def sendall(self, data: bytes, /) -> None:
        """Write all of ``data``."""
        ...


class SocketStream:
    """:class:`AsyncStream` over a non-blocking socket of ``loop`` (loop thread)."""

    __slots__ = ("loop", "sock")

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
        self.loop = loop
        self.sock = sock

    async def recv(self, n: int) -> bytes:
        """Up to ``n`` bytes; ``b""`` at the end of the stream."""
        return await self.loop.sock_recv(self.sock, n)

    async def sendall(self, data: bytes) -> None:
        """Write all of ``data``."""
        await self.loop.sock_sendall(self.sock, data)


async def recv_exact(io: AsyncStream, n: int, what: str = "authentication") -> bytes:
    """Exactly ``n`` bytes of ``io``.

    Raises:
        ProtocolError: the peer closed the stream first (``what`` names the step).
    """
    data = b""
    while len(data) < n:
        chunk = await io.recv(n - len(data))
        if not chunk:
            raise ProtocolError(f"peer closed the connection during {what}")
        data += chunk
    return data


async def authenticate_listener(
    loop: asyncio.AbstractEventLoop, sock: socket.socket, token: bytes | None, timeout_s: float
) -> None:
    """Run the listener's side on a non-blocking accepted socket (loop thread).

    Raises:
        ProtocolError: the dialer does not know the token (or this side has none).
        TimeoutError: it took longer than ``timeout_s``.
        OSError: the socket failed.
    """
    await authenticate_listener_io(SocketStream(loop, sock), token, timeout_s)


async def authenticate_listener_io(io: AsyncStream, token: bytes | None, timeout_s: float) -> None:
    """Run the listener's side over ``io`` (a socket or a TLS session; loop thread).

    Raises:
        ProtocolError: the dialer does not know the token (or this side has none).
        TimeoutError: it took longer than ``timeout_s``.
        OSError: the socket failed.
    """
    nonce_l = os.urandom(_NONCE)
    async with asyncio.timeout(timeout_s):
        await io.sendall(MAGIC + nonce_l)
        answer = await recv_exact(io, _NONCE + _MAC)
        nonce_d, proof = answer[:_NONCE], answer[_NONCE:]
        if token is None:
            raise ProtocolError("this process has no cluster token: TCP peers are refused")
        if not hmac.compare_digest(proof, _mac(token, b"dialer", nonce_l, nonce_d)):
            raise ProtocolError("bad cluster token")
        await io.sendall(_mac(token, b"listener", nonce_l, nonce_d))


async def authenticate_dialer(
    loop: asyncio.AbstractEventLoop, sock: socket.socket, token: bytes, timeout_s: float
) -> None:
    """Run the dialer's side on a non-blocking connected socket (loop thread).

    Raises:
        ProtocolError: the listener does not know the token, or speaks another protocol.
        TimeoutError: it took longer than ``timeout_s``.
        OSError: the socket failed.
    """
    await authenticate_dialer_io(SocketStream(loop, sock), token, timeout_s)


async def authenticate_dialer_io(io: AsyncStream, token: bytes, timeout_s: float) -> None:
    """Run the dialer's side over ``io`` (a socket or a TLS session; loop thread).

    Raises:
        ProtocolError: the listener does not know the token, or speaks another protocol.
        TimeoutError: it took longer than ``timeout_s``.
        OSError: the socket failed.
    """
    async with asyncio.timeout(timeout_s):
        nonce_l = _check_challenge(await recv_exact(io, _CHALLENGE))
        nonce_d = os.urandom(_NONCE)
        await io.sendall(nonce_d + _mac(token, b"dialer", nonce_l, nonce_d))
        proof = await recv_exact(io, _MAC)
    if not hmac.compare_digest(proof, _mac(token, b"listener", nonce_l, nonce_d)):
        raise ProtocolError("the listener does not know the cluster token")


def dial_handshake_blocking(sock: BlockingStream, token: bytes) -> None:
    """The dialer's side on a blocking socket (or TLS session over one) whose timeout bounds each step.

    Raises:
        ProtocolError: the listener does not know the token, or speaks another protocol.
        OSError: the socket failed or timed out.
    """

    def recv_exact(n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            if not chunk:
                raise ProtocolError("peer closed the connection during authentication")
            data += chunk
        return data

    nonce_l = _check_challenge(recv_exact(_CHALLENGE))
    nonce_d = os.urandom(_NONCE)
    sock.sendall(nonce_d + _mac(token, b"dialer", nonce_l, nonce_d))
    if not hmac.compare_digest(recv_exact(_MAC), _mac(token, b"listener", nonce_l, nonce_d)):
        raise ProtocolError("the listener does not know the cluster token")
