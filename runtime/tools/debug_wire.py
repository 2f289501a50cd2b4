"""The wire of ``monarch debug``: length-prefixed JSON frames and a challenge-response login.

Every connection to the client's debug controller (a paused rank) or debug server (the
``monarch debug`` command) starts with the server sending a random nonce; the peer answers
``HMAC-SHA256(secret, role + nonce)``. Nothing else is read from a peer before that answer checks
out, and no frame may be larger than :data:`MAX_FRAME` bytes, so an unauthenticated peer can make
the server read at most one bounded frame.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import socket
import struct
from typing import Any

__all__ = ["MAX_FRAME", "DebugWireError", "login", "recv", "send", "welcome"]

MAX_FRAME = 16 << 20
"""Largest frame in bytes (a source file shipped to a rank fits; anything larger is refused)."""
_MAX_LOGIN_FRAME = 4096
_HEADER = struct.Struct(">I")


class DebugWireError(ConnectionError):
    """The peer sent something malformed, too large, or failed the login."""


def send(sock: socket.socket, obj: dict[str, Any]) -> None:
    """Send one JSON frame.

    Raises:
        OSError: the connection is gone.
    """
    body = json.dumps(obj).encode()
    sock.sendall(_HEADER.pack(len(body)) + body)


def _read_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("debug connection closed")
        buf += chunk
    return bytes(buf)


def recv(sock: socket.socket, limit: int = MAX_FRAME) -> dict[str, Any]:
    """Receive one JSON object frame of at most ``limit`` bytes.

    Raises:
        DebugWireError: the frame is too large or not a JSON object.
        ConnectionError: the connection closed.
    """
    (n,) = _HEADER.unpack(_read_exact(sock, _HEADER.size))
    if n > limit:
        raise DebugWireError(f"debug frame of {n} bytes refused (at most {limit})")
    try:
        obj = json.loads(_read_exact(sock, n))
    except (UnicodeDecodeError, ValueError) as exc:
        raise DebugWireError(f"malformed debug frame: {exc}") from None
    if not isinstance(obj, dict):
        raise DebugWireError("malformed debug frame: not a JSON object")
    return obj


def _mac(secret: bytes, role: str, nonce: bytes) -> str:
    return hmac.new(secret, role.encode() + nonce, hashlib.sha256).hexdigest()


def welcome(
    sock: socket.socket, secrets_ok: list[bytes], role: str, timeout_s: float = 10.0
) -> None:
    """Server side of the login: challenge the peer and check its answer.

    Args:
        sock: the accepted connection.
        secrets_ok: the secrets a peer may prove it holds (any one suffices).
        role: ``"rank"`` or ``"cli"``, bound into the answer.
        timeout_s: how long the peer has to answer, in seconds.

    Raises:
        DebugWireError: wrong answer, malformed frame, or no answer in time.
    """
    nonce = secrets.token_bytes(32)
    sock.settimeout(timeout_s)
    try:
        send(sock, {"t": "challenge", "nonce": nonce.hex()})
        answer = recv(sock, _MAX_LOGIN_FRAME)
    except TimeoutError:
        raise DebugWireError("debug peer did not log in in time") from None
    mac = answer.get("mac")
    if not isinstance(mac, str) or not any(
        hmac.compare_digest(mac, _mac(s, role, nonce)) for s in secrets_ok
    ):
        raise DebugWireError("debug peer failed the login")
    send(sock, {"t": "ok"})
    sock.settimeout(None)


def login(sock: socket.socket, secret: bytes, role: str, timeout_s: float = 10.0) -> None:
    """Client side of the login.

    Raises:
        DebugWireError: the server refused us or spoke something else.
    """
    sock.settimeout(timeout_s)
    challenge = recv(sock, _MAX_LOGIN_FRAME)
    nonce = challenge.get("nonce")
    if challenge.get("t") != "challenge" or not isinstance(nonce, str):
        raise DebugWireError("not a monarch debug server")
    try:
        raw = bytes.fromhex(nonce)
    except ValueError:
        raise DebugWireError("not a monarch debug server") from None
    send(sock, {"t": "auth", "mac": _mac(secret, role, raw)})
    if recv(sock, _MAX_LOGIN_FRAME).get("t") != "ok":
        raise DebugWireError("the debug server refused the login")
    sock.settimeout(None)


def cluster_token() -> bytes | None:
    """This process's cluster token (``MONARCH_CLUSTER_TOKEN``), or None."""
    raw = os.environ.get("MONARCH_CLUSTER_TOKEN")
    return raw.encode() if raw else None
