"""The transport seam: what the router needs from a transport, as ``Protocol``s, and its settings.

A :class:`Transport` makes :class:`Link`\\ s (one connection carrying frames both ways) by
listening, dialing or adopting a connected socket, and reports every received frame and every
closed link to the two handlers it was built with. Frames are iovec lists built by
``frame.encode_frame`` / ``frame.frame_iov``; what arrives is a decoded envelope and its
out-of-band buffers. Implementations: :class:`~monarch._transport.sockets.SocketTransport`
(``unix:`` and ``tcp:`` addresses). Nothing here reads the environment: the composition root
fills :class:`TransportSettings` (from ``monarch.config``) and passes it in.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = ["CloseHandler", "FrameHandler", "Link", "Listening", "Transport", "TransportSettings"]


class Link(Protocol):
    """One connection carrying frames in both directions."""

    peer: str
    """A readable name of the peer (its address when known), for logs and errors."""
    closed: bool
    """True once the link is closed (by either side or by an error); it never reopens."""
    outgoing: bool
    """True for links made by ``connect()``/``adopt()``, False for accepted ones."""
    state: dict[str, Any]
    """A free slot for the layer above (e.g. the router's ``"origin"``, ``"addr"``). An accepted
    link carries ``"accept_index"``: its place in the listener's accept order (0 = first),
    which authentication (finishing in any order) does not change."""

    def send(self, iov: list[Any]) -> None:
        """Queue one frame's iovecs for writing; any thread, never blocks.

        Raises:
            ConnectionError: the link is closed.
        """
        ...

    def share(self, bufs: list[Any]) -> list[int] | None:
        """Move the large buffers of a frame about to be sent into shared memory.

        Returns:
            The envelope's ``shm`` list (segment id per buffer, 0 = inline), or None when every
            buffer goes inline. The caller must then send that frame on this link.
        """
        ...

    def close(self, exc: BaseException | None = None) -> None:
        """Close the link (loop thread); the close handler runs once, with ``exc``."""
        ...


FrameHandler = Callable[[Link, Any, list[memoryview]], None]
"""``(link, envelope, out-of-band buffers)``, called on the event-loop thread per frame. A
:class:`~monarch._core.errors.ProtocolError` it raises closes that link."""

CloseHandler = Callable[[Link, "BaseException | None"], None]
"""``(link, exc)``, called once per link on the event-loop thread; ``exc`` is None on a clean
end of stream, a :class:`~monarch._core.errors.ConnectError` when ``connect()`` failed, a
:class:`~monarch._core.errors.ProtocolError` for a hostile or broken peer."""


class Listening(Protocol):
    """A bound listening endpoint."""

    address: str
    """The address peers dial (``unix:/path`` or ``tcp:HOST:PORT`` with the real port)."""

    def close(self) -> None:
        """Stop accepting (loop thread); links already made stay open."""
        ...


class Transport(Protocol):
    """Makes links; reports their frames and ends to the handlers given at construction."""

    def listen(self, target: str | socket.socket, on_link: Callable[[Link], None]) -> Listening:
        """Listen on an address or an already-bound listening socket.

        ``on_link(link)`` runs on the loop thread for each incoming link, only after it
        authenticated (TCP).

        Raises:
            ValueError: a malformed address.
            OSError: the address cannot be bound.
        """
        ...

    def connect(self, addr: str) -> Link:
        """A link to ``addr`` that is dialed and authenticated in the background.

        Returns at once (any thread; never blocks the event loop). Frames sent before the link
        is up are queued, up to ``TransportSettings.max_connect_queue_bytes``. A failure closes
        the link through the close handler with a ``ConnectError`` naming ``addr``.

        Raises:
            ValueError: a malformed address.
        """
        ...

    def adopt(self, addr: str, sock: socket.socket) -> Link:
        """A link over an already-connected (Unix) socket, known to the caller as ``addr``."""
        ...

    def close(self) -> None:
        """Close every listener and link of this transport (loop thread)."""
        ...


@dataclass(frozen=True, slots=True)
class TransportSettings:
    """Every knob of the socket transport. Defaults are the values the runtime ships with.

    Attributes:
        peer_timeout_s: a silent TCP peer is declared lost after this long (kernel keepalive
            and ``TCP_USER_TIMEOUT``); was ``MONARCH_PEER_TIMEOUT_S``. At least 0.5 s.
        connect_timeout_s: bound on dialing one address (connect + authentication).
        auth_timeout_s: bound on the authentication exchange of an accepted TCP connection.
        max_connect_queue_bytes: bytes a link queues while it is still being dialed; sending
            more raises ``ConnectionError``.
        socket_buffer_bytes: ``SO_SNDBUF``/``SO_RCVBUF`` asked for every socket.
        max_envelope_bytes: the largest envelope accepted from a peer; larger closes the link
            with a ``ProtocolError``.
        max_frame_bytes: the largest received frame, envelope plus out-of-band buffers.
        max_connections: accepted links open at once per transport; beyond it new connections
            are refused (closed at once, reason logged).
        shm_enabled: shared memory for large buffers on Unix links (Linux memfd + numpy);
            was ``MONARCH_SHM`` (``0`` = off).
        shm_min_bytes: buffers this large or larger go through shared memory.
        shm_link_max_bytes: shared memory one link holds per direction (segments in use plus
            kept for reuse; the receiver refuses a peer that maps more); beyond it buffers go
            inline.
        shm_total_max_bytes: shared memory all links of this transport hold for sending.
        shm_keep_max_bytes: a segment larger than this is freed (both sides) as soon as the
            receiver is done with it, instead of being kept for reuse.
        shm_pool_keep_bytes: idle segments kept for reuse per link; beyond it released ones
            are freed.
        authenticate_unix: when this process has a cluster token, Unix links run the same
            mutual token handshake as TCP before any frame (a local process that cannot prove
            the token cannot send a single frame); False trusts the socket folder's permissions.
        capture_frames_dir: write every frame each link sends and receives into this folder
            (``capture.py``; ``MONARCH_CAPTURE_FRAMES_DIR``); None: off, and no code of it runs.
    """

    peer_timeout_s: float = 3.0
    connect_timeout_s: float = 10.0
    auth_timeout_s: float = 10.0
    max_connect_queue_bytes: int = 64 << 20
    socket_buffer_bytes: int = 4 << 20
    max_envelope_bytes: int = 64 << 20
    max_frame_bytes: int = 10 << 30  # Monarch's codec_max_frame_length default
    max_connections: int = 4096
    shm_enabled: bool = True
    shm_min_bytes: int = 1 << 20
    shm_link_max_bytes: int = 1 << 30
    shm_total_max_bytes: int = 2 << 30
    shm_keep_max_bytes: int = 64 << 20
    shm_pool_keep_bytes: int = 64 << 20
    authenticate_unix: bool = True
    capture_frames_dir: str | None = None

    def __post_init__(self) -> None:
        if self.peer_timeout_s < 0.5:
            raise ValueError(f"peer_timeout_s must be at least 0.5 s, got {self.peer_timeout_s}")
        for name in ("connect_timeout_s", "auth_timeout_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        for name in ("max_envelope_bytes", "max_frame_bytes", "max_connections", "shm_min_bytes"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
