"""The host agent's control protocol: a preface, TLS and/or the token handshake, then bounded JSON frames.

One TCP connection per client and agent, dialed by the client::

    agent  -> client:  PREFACE (8 bytes) + mode (1 byte: b"A" token handshake follows, b"N" none,
                       b"T" TLS follows)
    (mode T) a mutual TLS handshake (``_transport/tls.py``, the agent as server; the client's
             certificate is required), then inside TLS a second mode byte, b"A" or b"N"
    (mode A) the cluster-token handshake of ``_transport/auth.py``, the agent as listener
    both directions:   frames, each a 4-byte big-endian length + one UTF-8 JSON object

The preface is the only plaintext of a TLS agent (it says "TLS follows", so a client without
TLS files gets a clear refusal instead of a timeout). Nothing of the peer's is decoded before
the handshakes succeeded, frames are bounded by :data:`MAX_FRAME_BYTES`, and the payloads are
JSON in both directions (never pickle: a pickle body is refused as undecodable): an agent runs no
code of a client, it only starts procs, whose own links are authenticated the same way.

Requests (client -> agent) and answers (agent -> client) carry the request's ``id``:

- ``{"op": "hello", "client": ADDR[, "token": T][, "peer_timeout_s": S]}`` ->
  ``{"op": "hello", "hostname", "ip", "pid"}``; ``token`` only to an agent in mode N, which gives
  it to the procs it starts for this client. With ``peer_timeout_s`` (the client's liveness bound,
  clamped to 0.5..3600 s) both sides then send ``{"op": "ping"}`` every ``S / 4``; the agent ends
  the connection when the client is silent (no frame at all) for ``S`` and kills its procs, the
  client declares the host lost when the agent is silent for ``3 S / 4`` (seen within ``S``).
  Without it: no heartbeats and no silence limit.
- ``{"op": "spawn", "id", "count", "name", "env"}`` ->
  ``{"op": "spawned", "id", "procs": [{"addr", "pid", "name"}]}`` or ``{"op": "error", "id", "error"}``.
- ``{"op": "kill", "addrs": [...]}``: SIGKILL those procs (no answer; their exits are reported).
- ``{"op": "shutdown"}``: the client's ``HostMesh.shutdown()`` (no answer); an agent of
  ``run_worker_loop_forever`` then stops serving, one of ``monarch host serve`` ignores it.

Events (agent -> client): ``{"op": "exited", "addr", "pid", "reason"}`` once per proc;
``{"op": "ping"}`` (both ways, see hello).
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
from typing import Any

from .._core.errors import ProtocolError
from .._transport.auth import (
    AsyncStream,
    BlockingStream,
    SocketStream,
    authenticate_listener_io,
    dial_handshake_blocking,
)
from .._transport.tls import BlockingTlsStream, TlsConfig, TlsSession

__all__ = [
    "MAX_FRAME_BYTES",
    "PREFACE",
    "accept_client",
    "decode",
    "dial_agent",
    "encode",
    "recv_frame",
    "recv_frame_blocking",
]

PREFACE = b"MNRCHag1"
MODE_TOKEN = b"A"
MODE_NONE = b"N"
MODE_TLS = b"T"
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


def recv_exact_blocking(sock: BlockingStream, n: int) -> bytes:
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


def recv_frame_blocking(sock: BlockingStream) -> dict[str, Any]:
    """One frame from a blocking socket.

    Raises:
        ConnectionError: the peer closed the connection.
        ProtocolError: an oversized or malformed frame.
        OSError: the socket failed or timed out.
    """
    n = frame_length(recv_exact_blocking(sock, _LEN.size))
    return decode(recv_exact_blocking(sock, n))


async def _recv_exact_io(io: AsyncStream, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        chunk = await io.recv(n - len(data))
        if not chunk:
            raise ConnectionError("")
        data += chunk
    return bytes(data)


async def recv_frame(io: AsyncStream) -> dict[str, Any]:
    """One frame from ``io`` (the agent's side; loop thread).

    Raises:
        ConnectionError: the peer closed the stream.
        ProtocolError: an oversized or malformed frame.
    """
    n = frame_length(await _recv_exact_io(io, _LEN.size))
    return decode(await _recv_exact_io(io, n))


async def accept_client(
    loop: asyncio.AbstractEventLoop,
    conn: socket.socket,
    *,
    token: bytes | None,
    tls: TlsConfig | None,
    timeout_s: float,
) -> AsyncStream:
    """The agent's side of a new connection: preface, TLS (when ``tls``), the token handshake
    (when ``token``); the stream frames then travel on.

    Raises:
        ProtocolError: the client was refused (TLS or token).
        TimeoutError: longer than ``timeout_s``.
        OSError: the socket failed.
    """
    mode = MODE_TOKEN if token is not None else MODE_NONE
    io: AsyncStream
    async with asyncio.timeout(timeout_s):
        if tls is not None:
            await loop.sock_sendall(conn, PREFACE + MODE_TLS)
            session = TlsSession(loop, conn, tls.server_context(), server_side=True)
            await session.handshake()
            await session.sendall(mode)
            io = session
        else:
            await loop.sock_sendall(conn, PREFACE + mode)
            io = SocketStream(loop, conn)
        if token is not None:
            await authenticate_listener_io(io, token, timeout_s)
    return io


def dial_agent(
    sock: socket.socket, *, token: bytes | None, tls: TlsConfig | None, addr: str
) -> tuple[BlockingStream, bool]:
    """The client's side on a connected blocking socket (its timeout bounds each step).

    Returns:
        The stream frames travel on, and whether the agent authenticates with the token.

    Raises:
        ProtocolError: not an agent, TLS on one side only, a refused certificate, or a token
            mismatch (the message says which).
        OSError: the socket failed or timed out.
    """
    preface = recv_exact_blocking(sock, len(PREFACE) + 1)
    if preface[:-1] != PREFACE:
        raise ProtocolError("the peer is not a monarch host agent")
    mode = preface[-1:]
    io: BlockingStream = sock
    if mode == MODE_TLS:
        if tls is None:
            raise ProtocolError(
                f"the host agent at {addr} requires TLS: pass ca= and private_key= to attach_to_workers, or set "
                "MONARCH_TLS_CA / MONARCH_TLS_CERT / MONARCH_TLS_KEY"
            )
        io = BlockingTlsStream(sock, tls.client_context())
        mode = recv_exact_blocking(io, 1)
    elif tls is not None:
        raise ProtocolError(
            f"this client uses TLS and the host agent at {addr} does not (start it with the TLS files too)"
        )
    if mode == MODE_TOKEN:
        if token is None:
            raise ProtocolError("the agent requires a cluster token and this client has none")
        dial_handshake_blocking(io, token)
        return io, True
    if mode != MODE_NONE:
        raise ProtocolError(f"unknown agent mode {mode!r}")
    return io, False
