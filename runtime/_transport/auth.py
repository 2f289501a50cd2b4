"""Mutual authentication of a TCP connection with the cluster token, before any frame.

Both sides prove they know the token; neither decodes a byte of the peer's frames first::

    listener -> dialer:   MAGIC (8 bytes) + nonce_l (32 random bytes)
    dialer   -> listener: nonce_d (32 random bytes) + HMAC-SHA256(token, "dialer" + nonce_l + nonce_d)
    listener -> dialer:   HMAC-SHA256(token, "listener" + nonce_l + nonce_d)

Each side checks the other's MAC with a constant-time compare; the listener answers only after the
dialer proved itself (it is no MAC oracle for strangers), and the role label keeps one side's
proof from being replayed as the other's. Every message has a fixed size and every wait a time
bound, so a silent or babbling peer costs at most ``timeout_s`` and 104 bytes.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import socket

from .._core.errors import ProtocolError

__all__ = ["MAGIC", "authenticate_dialer", "authenticate_listener", "dial_handshake_blocking"]

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


async def _recv_exact(loop: asyncio.AbstractEventLoop, sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = await loop.sock_recv(sock, n - len(data))
        if not chunk:
            raise ProtocolError("peer closed the connection during authentication")
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
    nonce_l = os.urandom(_NONCE)
    async with asyncio.timeout(timeout_s):
        await loop.sock_sendall(sock, MAGIC + nonce_l)
        answer = await _recv_exact(loop, sock, _NONCE + _MAC)
        nonce_d, proof = answer[:_NONCE], answer[_NONCE:]
        if token is None:
            raise ProtocolError("this process has no cluster token: TCP peers are refused")
        if not hmac.compare_digest(proof, _mac(token, b"dialer", nonce_l, nonce_d)):
            raise ProtocolError("bad cluster token")
        await loop.sock_sendall(sock, _mac(token, b"listener", nonce_l, nonce_d))


async def authenticate_dialer(
    loop: asyncio.AbstractEventLoop, sock: socket.socket, token: bytes, timeout_s: float
) -> None:
    """Run the dialer's side on a non-blocking connected socket (loop thread).

    Raises:
        ProtocolError: the listener does not know the token, or speaks another protocol.
        TimeoutError: it took longer than ``timeout_s``.
        OSError: the socket failed.
    """
    async with asyncio.timeout(timeout_s):
        nonce_l = _check_challenge(await _recv_exact(loop, sock, _CHALLENGE))
        nonce_d = os.urandom(_NONCE)
        await loop.sock_sendall(sock, nonce_d + _mac(token, b"dialer", nonce_l, nonce_d))
        proof = await _recv_exact(loop, sock, _MAC)
    if not hmac.compare_digest(proof, _mac(token, b"listener", nonce_l, nonce_d)):
        raise ProtocolError("the listener does not know the cluster token")


def dial_handshake_blocking(sock: socket.socket, token: bytes) -> None:
    """The dialer's side on a blocking socket whose timeout bounds each step.

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
