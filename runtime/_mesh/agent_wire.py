"""The host agent's control protocol: a preface, the token handshake, then bounded JSON frames.

One TCP connection per client and agent, dialed by the client::

    agent  -> client:  PREFACE (8 bytes) + mode (1 byte: b"A" token handshake follows, b"N" none)
    (mode A) the cluster-token handshake of ``_transport/auth.py``, the agent as listener
    both directions:   frames, each a 4-byte big-endian length + one UTF-8 JSON object

Nothing of the peer's is decoded before the handshake succeeded, frames are bounded by
:data:`MAX_FRAME_BYTES`, and the payloads are JSON (never pickle): an agent runs no code of a
client, it only starts procs, whose own links are authenticated with the same token.

Requests (client -> agent) and answers (agent -> client) carry the request's ``id``:

- ``{"op": "hello", "client": ADDR[, "token": T]}`` -> ``{"op": "hello", "hostname", "ip", "pid"}``;
  ``token`` only to an agent in mode N, which gives it to the procs it starts for this client.
- ``{"op": "spawn", "id", "count", "name", "env"}`` ->
  ``{"op": "spawned", "id", "procs": [{"addr", "pid", "name"}]}`` or ``{"op": "error", "id", "error"}``.
- ``{"op": "kill", "addrs": [...]}``: SIGKILL those procs (no answer; their exits are reported).

Events (agent -> client): ``{"op": "exited", "addr", "pid", "reason"}`` once per proc.
"""

from __future__ import annotations

import json
import socket
import struct
from typing import Any

from .._core.errors import ProtocolError

__all__ = ["MAX_FRAME_BYTES", "PREFACE", "decode", "encode", "recv_frame_blocking"]

PREFACE = b"MNRCHag1"
MODE_TOKEN = b"A"
MODE_NONE = b"N"
MAX_FRAME_BYTES = 1 << 20
_LEN = struct.Struct(">I")


def encode(msg: dict[str, Any]) -> bytes:
    """One frame: length prefix + the JSON of ``msg``.

    Raises:
        ValueError: the frame would exceed :data:`MAX_FRAME_BYTES`.
    """
    body = json.dumps(msg, separators=(",", ":")).encode()
    if len(body) > MAX_FRAME_BYTES:
        raise ValueError(f"agent frame of {len(body)} bytes (at most {MAX_FRAME_BYTES})")
    return _LEN.pack(len(body)) + body


def frame_length(header: bytes) -> int:
    """The body length a 4-byte header announces.

    Raises:
        ProtocolError: longer than :data:`MAX_FRAME_BYTES`.
    """
    (n,) = _LEN.unpack(header)
    if n > MAX_FRAME_BYTES:
        raise ProtocolError(f"agent frame of {n} bytes announced (at most {MAX_FRAME_BYTES})")
    return int(n)


def decode(body: bytes) -> dict[str, Any]:
    """The JSON object of a frame body.

    Raises:
        ProtocolError: not a JSON object with a string ``op``.
    """
    try:
        msg = json.loads(body)
    except ValueError as exc:
        raise ProtocolError(f"undecodable agent frame: {exc}") from exc
    if not isinstance(msg, dict) or not isinstance(msg.get("op"), str):
        raise ProtocolError("agent frame is not a JSON object with an 'op'")
    return msg


def recv_exact_blocking(sock: socket.socket, n: int) -> bytes:
    """Exactly ``n`` bytes from a blocking socket.

    Raises:
        ConnectionError: the peer closed the connection first.
        OSError: the socket failed or timed out.
    """
    data = bytearray()
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("the peer closed the connection")
        data += chunk
    return bytes(data)


def recv_frame_blocking(sock: socket.socket) -> dict[str, Any]:
    """One frame from a blocking socket.

    Raises:
        ConnectionError: the peer closed the connection.
        ProtocolError: an oversized or malformed frame.
        OSError: the socket failed or timed out.
    """
    n = frame_length(recv_exact_blocking(sock, _LEN.size))
    return decode(recv_exact_blocking(sock, n))
