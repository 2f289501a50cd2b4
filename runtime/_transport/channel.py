"""Channels: non-blocking stream connections carrying frames, over Unix sockets or TCP.

A :class:`Connection` may be written from any thread: a sender holding no queued data writes
straight to the socket (no event-loop hop); what does not fit is queued and flushed by the event
loop when the socket becomes writable, so no thread ever blocks on a full peer. Reading happens on
the event loop only, ``recv_into`` straight into each out-of-band buffer.

Addresses: ``unix:/path/to/socket`` or ``tcp:HOST:PORT``. A TCP connection authenticates before
any frame is accepted: the listener sends a 32-byte nonce, the dialer answers with
HMAC-SHA256(cluster token, nonce); a wrong answer closes the connection.
"""

from __future__ import annotations

import array
import asyncio
import errno
import hashlib
import hmac
import itertools
import logging
import os
import socket
import threading
from collections import deque
from collections.abc import Callable
from time import monotonic as _monotonic
from typing import Any

from .._core.errors import ConnectError, ProtocolError
from . import shm
from .envelope import Envelope
from .frame import FrameDecoder
from .shm import SegmentPool, SegmentTable, take_fds

__all__ = ["Connection", "Listener", "dial", "parse_address"]

log = logging.getLogger("monarch.transport")

_IOV_MAX = 512
_BURST_S = 50e-6  # a write this soon after the previous one is coalesced with what follows
_COALESCE_MAX = 64 * 1024  # smaller iovecs are copied into the queue; larger ones queued as views
_FLUSH_BYTES = 1 << 20  # queued bytes that make the sending thread write without waiting
_RECV_CHUNK = 256 * 1024
_SOCK_BUF_BYTES = 4 * 1024 * 1024
_NONCE_BYTES = 32
_ANC_BYTES = socket.CMSG_SPACE(64 * 4)  # room for 64 descriptors per read

FrameHandler = Callable[["Connection", Any, list[memoryview]], None]
CloseHandler = Callable[["Connection", BaseException | None], None]


def parse_address(addr: str) -> tuple[int, Any]:
    """``(family, sockaddr)`` of ``unix:/path`` or ``tcp:host:port``.

    Raises:
        ValueError: not one of the two forms.
    """
    if addr.startswith("unix:"):
        return socket.AF_UNIX, addr[5:]
    if addr.startswith("tcp:"):
        host, _, port = addr[4:].rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"bad tcp address {addr!r}; expected tcp:HOST:PORT")
        return socket.AF_INET6 if ":" in host else socket.AF_INET, (host.strip("[]"), int(port))
    raise ValueError(f"bad address {addr!r}; expected unix:/path or tcp:HOST:PORT")


def _tune(sock: socket.socket) -> None:
    for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, opt, _SOCK_BUF_BYTES)
        except OSError:
            pass
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        _heartbeat(sock, peer_timeout_s())


def peer_timeout_s() -> float:
    """How long a silent TCP peer may go unanswered before its connection is declared lost
    (``MONARCH_PEER_TIMEOUT_S``, default 3 s)."""
    try:
        return max(0.5, float(os.environ.get("MONARCH_PEER_TIMEOUT_S", "3")))
    except ValueError:
        return 3.0


def _heartbeat(sock: socket.socket, timeout_s: float) -> None:
    """Kernel heartbeats on a TCP connection: keepalive probes every second after one idle
    second, and unacknowledged data, both bounded by ``timeout_s``; a lost peer then ends the
    connection, which the router reports like any other connection loss."""
    probes = max(1, int(timeout_s) - 1)
    for level, opt, value in (
        (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPIDLE", 0), 1),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPINTVL", 0), 1),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPCNT", 0), probes),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_USER_TIMEOUT", 0), int(timeout_s * 1000)),
    ):
        if opt:
            try:
                sock.setsockopt(level, opt, value)
            except OSError:
                pass


def _mac(token: bytes, nonce: bytes) -> bytes:
    return hmac.new(token, nonce, hashlib.sha256).digest()


class Connection:
    """One stream socket carrying frames in both directions.

    Args:
        sock: a connected socket (made non-blocking here).
        loop: the event loop that reads it and flushes queued writes.
        on_frame: called on the loop thread with ``(conn, envelope, buffers)`` per frame.
        on_close: called once on the loop thread when the connection ends (``exc`` None on EOF).
        max_envelope_bytes, max_frame_bytes: frame bounds (see :class:`FrameDecoder`).
        peer: a readable name of the peer, for logs and errors.
    """

    def __init__(
        self,
        sock: socket.socket,
        loop: asyncio.AbstractEventLoop,
        on_frame: FrameHandler,
        on_close: CloseHandler,
        *,
        max_envelope_bytes: int,
        max_frame_bytes: int,
        peer: str = "",
    ) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.fd = sock.fileno()
        self.loop = loop
        self.peer = peer
        self.closed = False
        self.state: dict[str, Any] = {}
        self._on_frame = on_frame
        self._on_close = on_close
        self._lock = threading.Lock()
        self._pending: deque[Any] = deque()  # memoryviews and (the last one) a bytearray
        self._tail: bytearray | None = None  # the bytearray at the end of _pending, to append to
        self._writer_armed = False
        self._flush_scheduled = False
        self._last_write = 0.0
        self._decoder = FrameDecoder(max_envelope_bytes, max_frame_bytes)
        self._stage = bytearray(_RECV_CHUNK)
        self._stage_view = memoryview(self._stage)
        self._shm_tx: SegmentPool | None = None
        if sock.family == socket.AF_UNIX and shm.available() and os.environ.get("MONARCH_SHM", "1") != "0":
            self._shm_tx = SegmentPool()
            self._decoder.segments = SegmentTable(self._segment_freed)
            self._decoder.on_segment_free = self._shm_tx.release

    def start_reading(self) -> None:
        """Register the reader; call on the loop thread."""
        self.loop.add_reader(self.fd, self._on_readable)

    # -- writing ----------------------------------------------------------------------------
    # A frame sent while the connection is quiet goes out at once (one sendmsg, no thread hop:
    # latency). A frame sent within _BURST_S of the previous write is queued instead and the
    # event loop flushes everything queued in one sendmsg (throughput: a burst of 10,000
    # messages costs tens of system calls and peer wake-ups, not 10,000). Small iovecs are
    # copied into one bytearray; large buffers are queued as views (zero copy).
    def send(self, iov: list[Any]) -> None:
        """Write one frame's iovecs, from any thread, without blocking.

        Raises:
            ConnectionError: the connection is already closed.
        """
        with self._lock:
            if self.closed:
                raise ConnectionResetError(f"connection to {self.peer} is closed")
            if self._pending:
                self._append(iov, 0)
                if self._tail is not None and len(self._tail) >= _FLUSH_BYTES and not self._writer_armed:
                    self._write_locked()
                return
            now = _monotonic()
            if now - self._last_write < _BURST_S:
                self._last_write = now
                self._append(iov, 0)
                self._schedule_flush()
                return
            self._last_write = now
            try:
                sent = self.sock.sendmsg(iov) if len(iov) <= _IOV_MAX else 0
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as exc:
                self._schedule_close(exc)
                return
            self._append(iov, sent)
            if self._pending:
                self._arm_writer()

    def share(self, bufs: list[Any]) -> list[int] | None:
        """Move the large buffers of a frame about to be sent into shared memory (Unix sockets).

        Returns the envelope's ``shm`` list (segment id per buffer, 0 = inline), or None when
        every buffer goes inline. Each shared buffer is copied once here; the caller must then
        send the frame (without those buffers' bytes) on this connection.
        """
        pool = self._shm_tx
        if pool is None:
            return None
        ids: list[int] | None = None
        for i, b in enumerate(bufs):
            mv = b if type(b) is memoryview else memoryview(b)
            n = mv.nbytes
            if n < shm.SHM_MIN_BYTES:
                continue
            got = pool.acquire(n)
            if got is None:
                continue
            seg, new = got
            if new and not self._announce(seg):
                pool.forget(seg.id)
                continue
            seg.mm[:n] = mv.cast("B") if mv.format != "B" or mv.ndim != 1 else mv
            if ids is None:
                ids = [0] * len(bufs)
            ids[i] = seg.id
        return ids

    def _announce(self, seg: Any) -> bool:
        """Send segment ``seg``'s descriptor ahead of any frame that uses it (only while
        nothing is queued, so the descriptor travels in stream order)."""
        env = Envelope()
        env.kind = "control"
        env.endpoint = shm.SHM_SEGMENT
        env.port = seg.id
        env.replyPort = seg.size
        data = env.to_bytes()
        with self._lock:
            if self.closed or self._pending:
                return False
            try:
                sent = self.sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [seg.fd]))])
            except OSError:
                return False
            if sent < len(data):
                self._append([data], sent)
                self._arm_writer()
            return True

    def _segment_freed(self, seg_id: int) -> None:
        # any thread, possibly inside garbage collection: schedule only
        try:
            self.loop.call_soon_threadsafe(self._send_segment_free, seg_id)
        except RuntimeError:  # loop closed
            pass

    def _send_segment_free(self, seg_id: int) -> None:
        if self.closed:
            return
        env = Envelope()
        env.kind = "control"
        env.endpoint = shm.SHM_FREE
        env.port = seg_id
        try:
            self.send([env.to_bytes()])
        except ConnectionError:
            pass

    def _append(self, iov: list[Any], skip: int) -> None:
        """Queue ``iov`` minus its first ``skip`` bytes (lock held)."""
        pending = self._pending
        tail = self._tail
        for b in iov:
            mv = b if type(b) is memoryview else memoryview(b)
            n = mv.nbytes
            if skip:
                if skip >= n:
                    skip -= n
                    continue
                mv = mv.cast("B")[skip:]
                n -= skip
                skip = 0
            if n < _COALESCE_MAX:
                if tail is None:
                    tail = bytearray(mv)
                    pending.append(tail)
                else:
                    tail += mv
            else:
                pending.append(mv.cast("B") if mv.format != "B" or mv.ndim != 1 else mv)
                tail = None
        self._tail = tail

    def _schedule_flush(self) -> None:
        if self._flush_scheduled or self._writer_armed:
            return
        self._flush_scheduled = True
        try:
            if _on_loop_thread(self.loop):
                self.loop.call_soon(self._flush)
            else:
                self.loop.call_soon_threadsafe(self._flush)
        except RuntimeError:  # loop closed at interpreter exit
            self._flush_scheduled = False

    def _flush(self) -> None:
        with self._lock:
            self._flush_scheduled = False
            if self._pending and not self._writer_armed and not self.closed:
                self._write_locked()

    def _write_locked(self) -> None:
        """Write what is queued until done or the socket is full (then the loop takes over)."""
        pending = self._pending
        while pending:
            if len(pending) == 1:
                batch: list[Any] = [pending[0]]
            else:
                batch = list(itertools.islice(pending, _IOV_MAX))
            try:
                sent = self.sock.sendmsg(batch)
            except (BlockingIOError, InterruptedError):
                self._arm_writer()
                return
            except OSError as exc:
                pending.clear()
                self._tail = None
                self._schedule_close(exc)
                return
            self._last_write = _monotonic()
            while sent and pending:
                head = pending[0]
                n = len(head) if type(head) is bytearray else head.nbytes
                if n <= sent:
                    sent -= n
                    pending.popleft()
                    if head is self._tail:
                        self._tail = None
                else:
                    if head is self._tail:
                        self._tail = None  # a view now pins it: no more appends
                    pending[0] = memoryview(head)[sent:]
                    sent = 0
                    self._arm_writer()
                    return

    def _arm_writer(self) -> None:
        if self._writer_armed:
            return
        self._writer_armed = True
        if _on_loop_thread(self.loop):
            self.loop.add_writer(self.fd, self._on_writable)
        else:
            self.loop.call_soon_threadsafe(self._add_writer)

    def _add_writer(self) -> None:
        if not self.closed:
            self.loop.add_writer(self.fd, self._on_writable)

    def _on_writable(self) -> None:
        with self._lock:
            self._writer_armed = False
            self._write_locked()
            if self._writer_armed:
                return  # still full: stay registered
            try:
                self.loop.remove_writer(self.fd)
            except (OSError, ValueError):
                pass

    # -- reading ------------------------------------------------------------------------------
    def _recv_with_fds(self, target: memoryview) -> int:
        n, anc, flags, _addr = self.sock.recvmsg_into([target], _ANC_BYTES)
        if anc:
            take_fds(anc, self._decoder.segments.fds)
        if flags & socket.MSG_CTRUNC:
            raise ProtocolError("file descriptors lost (control data truncated)")
        return n

    def _on_readable(self) -> None:
        frames: list[tuple[Any, list[memoryview]]] = []
        dec = self._decoder
        recv = self._recv_with_fds if self._shm_tx is not None else self.sock.recv_into
        try:
            for _ in range(64):
                target = dec.direct_target()
                if target is not None:
                    n = recv(target)
                    if n == 0:
                        raise EOFError
                    dec.advance_direct(n, frames)
                else:
                    n = recv(self._stage_view)
                    if n == 0:
                        raise EOFError
                    dec.feed(self._stage_view[:n], frames)
                    if n < _RECV_CHUNK and dec.direct_target() is None:
                        break
        except (BlockingIOError, InterruptedError):
            pass
        except EOFError:
            self._deliver(frames)
            self.close(None)
            return
        except ProtocolError as exc:
            log.error("closing connection from %s: %s", self.peer or "peer", exc)
            self._deliver(frames)
            self.close(exc)
            return
        except OSError as exc:
            self._deliver(frames)
            self.close(None if exc.errno in (errno.ECONNRESET, errno.EPIPE) else exc)
            return
        self._deliver(frames)

    def _deliver(self, frames: list[tuple[Any, list[memoryview]]]) -> None:
        for env, bufs in frames:
            try:
                self._on_frame(self, env, bufs)
            except ProtocolError as exc:
                log.error("closing connection from %s: %s", self.peer or "peer", exc)
                self.close(exc)
                return
            except Exception:
                log.exception("error while handling a frame from %s", self.peer or "peer")

    # -- closing ------------------------------------------------------------------------------
    def _schedule_close(self, exc: BaseException | None) -> None:
        if _on_loop_thread(self.loop):
            self.loop.call_soon(self.close, exc)
        else:
            try:
                self.loop.call_soon_threadsafe(self.close, exc)
            except RuntimeError:  # loop already closed at interpreter exit
                pass

    def close(self, exc: BaseException | None = None) -> None:
        """Close the socket and report it once; call on the loop thread."""
        if self.closed and self.sock.fileno() < 0:
            return
        with self._lock:
            was_closed = self.closed
            self.closed = True
            self._pending.clear()
            self._tail = None
        if self._shm_tx is not None:
            self._shm_tx.close()
            self._decoder.segments.close()
        for remove in (self.loop.remove_reader, self.loop.remove_writer):
            try:
                remove(self.fd)
            except (OSError, ValueError, RuntimeError):
                pass
        try:
            self.sock.close()
        except OSError:
            pass
        if not was_closed or exc is not None:
            self._on_close(self, exc)

    def __repr__(self) -> str:
        return f"<Connection peer={self.peer!r} closed={self.closed} queued={len(self._pending)}>"


def _on_loop_thread(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


def dial(addr: str, token: bytes | None, timeout_s: float = 10.0) -> socket.socket:
    """Connect to ``addr`` (blocking, bounded by ``timeout_s``) and authenticate on TCP.

    Raises:
        ConnectError: unreachable, refused, timed out, or authentication failed.
    """
    family, sockaddr = parse_address(addr)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout_s)
        sock.connect(sockaddr)
        if family != socket.AF_UNIX:
            nonce = _recv_exact(sock, _NONCE_BYTES)
            if token is None:
                raise ConnectError(f"{addr} needs a cluster token (set MONARCH_CLUSTER_TOKEN)")
            sock.sendall(_mac(token, nonce))
        _tune(sock)
        return sock
    except OSError as exc:
        sock.close()
        raise ConnectError(f"cannot connect to {addr}: {exc}") from exc
    except BaseException:
        sock.close()
        raise


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionResetError("peer closed during authentication")
        data += chunk
    return data


class Listener:
    """A listening socket whose accepted connections are handed to ``on_accept`` (loop thread).

    Args:
        addr: ``unix:/path`` or ``tcp:HOST:PORT`` (port 0 picks a free port; see ``address``).
        sock: an already-bound listening socket to use instead (e.g. inherited from a parent).
        token: the cluster token TCP dialers must prove; None refuses every TCP dialer.
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
            nonce = os.urandom(_NONCE_BYTES)
            await self.loop.sock_sendall(conn, nonce)
            answer = b""
            async with asyncio.timeout(10.0):
                while len(answer) < 32:
                    chunk = await self.loop.sock_recv(conn, 32 - len(answer))
                    if not chunk:
                        raise ProtocolError("closed during authentication")
                    answer += chunk
            if self._token is None or not hmac.compare_digest(answer, _mac(self._token, nonce)):
                raise ProtocolError("bad cluster token")
        except (OSError, ProtocolError, TimeoutError) as exc:
            log.error("rejected TCP connection from %s: %s", peer, exc)
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


def bind_listener(addr: str) -> socket.socket:
    """A bound, listening socket for ``addr`` (backlog 512)."""
    family, sockaddr = parse_address(addr)
    sock = socket.socket(family, socket.SOCK_STREAM)
    if family != socket.AF_UNIX:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(sockaddr)
    sock.listen(512)
    return sock


def address_of(sock: socket.socket) -> str:
    """The ``unix:``/``tcp:`` address a listening socket is bound to."""
    if sock.family == socket.AF_UNIX:
        name = sock.getsockname()
        return "unix:" + (name.decode() if isinstance(name, bytes) else name)
    host, port = sock.getsockname()[:2]
    return f"tcp:{host}:{port}"
