"""The ``tcp`` backend and the per-proc RDMA server.

The server runs in the owner process on its own threads (one accept thread, one thread per
connection), never on the actor's event loop. Reads are answered with ``sendmsg``/``sendall``
straight from the registered memory; writes are received with ``recv_into`` straight into it.
The same server is the owner's control channel for drops requested by other processes and for
setting up ibverbs queue pairs.

Bounds (settings of :mod:`monarch.rdma._config`, read when a connection is accepted):

- at most ``tcp_max_connections`` open connections (default 512); one more is answered with
  a ``BYE`` reply and closed at once;
- a connection silent for ``tcp_idle_timeout_s`` seconds (default 60) is closed, whether it
  waits between requests or stalls inside a transfer;
- a control request (and, on the client, a control answer or an error message) is at most
  ``tcp_max_request_bytes`` bytes (default 64 KiB); a larger one closes the connection.

Memory safety: every READ and WRITE holds a :class:`~monarch.rdma._registry.Lease` on its
region for as long as it touches the memory. A drop revokes the lease by shutting the
connection down (the blocked ``recv_into``/``send`` returns at once) and the registry releases
the memory only after the last lease ends, so a stalled peer never writes into freed memory.

Wire format (little-endian), one request at a time per connection:

- request: ``magic "MRT1", op u8, 3 pad, region u64, key u64, offset u64, length u64``; a
  ``CONNECT`` request is followed by ``length`` bytes of JSON.
- reply: ``status u8, 7 pad, length u64``; status 0 is OK; 1 an error whose UTF-8 message
  follows; 2 (``BYE``) an error whose message follows, after which the server closes the
  connection. ``READ``: OK then ``length`` bytes. ``WRITE``: OK ("send"), then the client sends
  ``length`` bytes, then a final reply. ``DROP``: a final reply. ``CONNECT``: OK then ``length``
  bytes of JSON.
"""

from __future__ import annotations

import logging
import os
import select
import socket
import struct
import threading
import time
from collections.abc import Callable

from monarch._core.errors import RDMAError

from ._config import current
from ._descriptor import Descriptor
from ._memory import view_at
from ._registry import get_registry

__all__ = ["RDMAServer", "TcpBackend", "control_request", "get_server"]

logger = logging.getLogger(__name__)

_REQ = struct.Struct("<4sB3xQQQQ")
_REP = struct.Struct("<B7xQ")
_TIMEVAL = struct.Struct("@ll")
_MAGIC = b"MRT1"
OP_READ, OP_WRITE, OP_DROP, OP_CONNECT = 1, 2, 3, 4
_OK, _ERR, _BYE = 0, 1, 2
_MAX_IDLE_PER_PEER = 8  # pooled client connections kept per server

ConnectHandler = Callable[[bytes], bytes]
DropHandler = Callable[[int, int], None]


def _recv_exact(sock: socket.socket, view: memoryview) -> None:
    got = 0
    size = len(view)
    while got < size:
        n = sock.recv_into(view[got:], size - got)
        if n == 0:
            raise ConnectionError("peer closed the connection")
        got += n


def _recv_bytes(sock: socket.socket, size: int) -> bytes:
    buf = bytearray(size)
    _recv_exact(sock, memoryview(buf))
    return bytes(buf)


def _shutdown(sock: socket.socket) -> None:
    """Wake every thread blocked on ``sock`` (the fd stays open: no reuse race)."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def _set_io_timeout(sock: socket.socket, timeout_s: float) -> None:
    # Kernel timeouts keep the socket blocking for Python: no poll() before every recv/send
    # on the data path, and a silent peer still ends in an OSError (EAGAIN) after timeout_s.
    sec = int(timeout_s)
    usec = max(int((timeout_s - sec) * 1_000_000), 0 if sec else 1000)
    tv = _TIMEVAL.pack(sec, usec)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, tv)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, tv)


def _send_header_and(conn: socket.socket, header: bytes, view: memoryview) -> None:
    """Send ``header`` then ``view`` in as few system calls as the kernel allows."""
    total = len(header) + len(view)
    sent = conn.sendmsg([header, view])
    if sent < len(header):
        conn.sendall(header[sent:])
        sent = len(header)
    if sent < total:
        conn.sendall(view[sent - len(header) :])


class RDMAServer:
    """Serves this process's registered regions over TCP, off the actor loop.

    Args:
        host: address to bind and advertise; ``0.0.0.0`` advertises this host's name's address.
        on_drop: called on a server thread for a remote ``drop()`` as ``on_drop(region, key)``.
    """

    def __init__(self, host: str, on_drop: DropHandler) -> None:
        self._on_drop = on_drop
        self.on_connect: ConnectHandler | None = None
        self._sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, 0))
        self._sock.listen(128)
        self.port: int = self._sock.getsockname()[1]
        self.host = socket.gethostbyname(socket.gethostname()) if host in ("0.0.0.0", "") else host
        self._closed = False
        self._lock = threading.Lock()
        self._conns: dict[socket.socket, threading.Thread] = {}
        self.refused = 0
        self._thread = threading.Thread(
            target=self._accept_loop, name="monarch-rdma-server", daemon=True
        )
        self._thread.start()

    @property
    def connections(self) -> int:
        """Connections open now."""
        return len(self._conns)

    def __repr__(self) -> str:
        return (
            f"<RDMAServer {self.host}:{self.port} pid={os.getpid()} connections={self.connections}"
            f" refused={self.refused} closed={self._closed}>"
        )

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop accepting, close every open connection and join the server's threads.

        Args:
            timeout_s: seconds to wait for the threads, in all.
        """
        self._closed = True
        _shutdown(self._sock)
        self._sock.close()
        with self._lock:
            conns = dict(self._conns)
        for conn in conns:
            _shutdown(conn)
        deadline = time.monotonic() + timeout_s
        for thread in [self._thread, *conns.values()]:
            if thread is not threading.current_thread():
                thread.join(max(deadline - time.monotonic(), 0.0))

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            cfg = current()
            thread = threading.Thread(
                target=self._serve, args=(conn,), name="monarch-rdma-conn", daemon=True
            )
            with self._lock:
                admitted = len(self._conns) < cfg.tcp_max_connections and not self._closed
                if admitted:
                    self._conns[conn] = thread
            if not admitted:
                self.refused += 1
                self._refuse(conn, f"RDMA server busy: {cfg.tcp_max_connections} connections open")
                continue
            try:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                _set_io_timeout(conn, cfg.tcp_idle_timeout_s)
                thread.start()
            except (OSError, RuntimeError) as exc:  # RuntimeError: no thread can be started
                logger.warning("RDMA server: cannot serve a connection: %s", exc)
                with self._lock:
                    self._conns.pop(conn, None)
                conn.close()

    @staticmethod
    def _refuse(conn: socket.socket, message: str) -> None:
        raw = message.encode()
        try:
            conn.setblocking(False)
            conn.send(_REP.pack(_BYE, len(raw)) + raw)
            conn.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        conn.close()

    def _serve(self, conn: socket.socket) -> None:
        header = bytearray(_REQ.size)
        try:
            while True:
                try:
                    _recv_exact(conn, memoryview(header))
                except OSError:  # EOF, reset, idle timeout (EAGAIN), shut down by close()
                    return
                magic, op, region_id, key, offset, length = _REQ.unpack(header)
                if magic != _MAGIC:
                    logger.warning("RDMA server: bad request magic; closing the connection")
                    return
                self._handle(conn, op, region_id, key, offset, length)
        except OSError as exc:
            logger.debug("RDMA server connection ended: %s", exc)
        finally:
            with self._lock:
                self._conns.pop(conn, None)
            conn.close()

    @staticmethod
    def _error(conn: socket.socket, message: str, status: int = _ERR) -> None:
        raw = message.encode()
        conn.sendall(_REP.pack(status, len(raw)) + raw)

    def _handle(
        self, conn: socket.socket, op: int, region_id: int, key: int, offset: int, length: int
    ) -> None:
        if op == OP_CONNECT:
            limit = current().tcp_max_request_bytes
            if length > limit:
                self._error(conn, f"control request of {length} bytes over {limit}", _BYE)
                raise ConnectionError("oversized control request")
            request = _recv_bytes(conn, length)
            try:
                if self.on_connect is None:
                    raise RDMAError("this process has no ibverbs device")
                answer = self.on_connect(request)
            except Exception as exc:
                self._error(conn, f"{type(exc).__name__}: {exc}")
                return
            conn.sendall(_REP.pack(_OK, len(answer)) + answer)
            return
        write = op == OP_WRITE
        try:
            if op == OP_DROP:
                self._on_drop(region_id, key)
                conn.sendall(_REP.pack(_OK, 0))
                return
            if op not in (OP_READ, OP_WRITE):
                raise RDMAError(f"unknown RDMA request {op}")
            # The lease keeps the memory alive while this thread touches it; a drop shuts the
            # connection down, which ends the recv_into/send below at once.
            lease = get_registry().lease(
                region_id, key, offset, length, write, revoke=lambda: _shutdown(conn)
            )
        except RDMAError as exc:
            self._error(conn, str(exc))
            return
        with lease:
            view = view_at(lease.addr, length)
            if not write:
                _send_header_and(conn, _REP.pack(_OK, length), view)
                return
            conn.sendall(_REP.pack(_OK, length))
            _recv_exact(conn, view)
            intact = lease.region.valid
        if intact:
            conn.sendall(_REP.pack(_OK, 0))
        else:
            self._error(conn, f"RDMA region {region_id} was dropped during the write")


_server_lock = threading.Lock()
_server: RDMAServer | None = None


def get_server(host: str, on_drop: DropHandler) -> RDMAServer:
    """This process's RDMA server, started on first call."""
    global _server
    with _server_lock:
        if _server is None:
            _server = RDMAServer(host, on_drop)
        return _server


def _reset_after_fork() -> None:
    global _server, _pool
    _server = None
    _pool = _Pool()


class _Pool:
    """Idle client connections, at most ``_MAX_IDLE_PER_PEER`` per server, none kept past the
    idle timeout (the server would have closed them)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: dict[tuple[str, int], list[tuple[float, socket.socket]]] = {}
        self._next_prune = 0.0

    def take(self, host: str, port: int, timeout_s: float) -> tuple[socket.socket, bool]:
        """A connection to ``host:port`` and whether it was pooled (it may be stale)."""
        now = time.monotonic()
        max_age = current().tcp_idle_timeout_s
        while True:
            with self._lock:
                idle = self._idle.get((host, port))
                if not idle:
                    break
                since, sock = idle.pop()
                if not idle:
                    del self._idle[(host, port)]
            if now - since < max_age and not _readable(sock):
                return sock, True
            sock.close()  # closed by the server (EOF pending) or too old to trust
        try:
            sock = socket.create_connection((host, port), timeout=max(timeout_s, 0.001))
        except OSError as exc:
            raise RDMAError(
                f"cannot reach the RDMA server at {host}:{port} (owner gone?): {exc}"
            ) from exc
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock, False

    def give(self, host: str, port: int, sock: socket.socket) -> None:
        """Keep ``sock`` for reuse (or close it when the pool for that server is full)."""
        now = time.monotonic()
        stale: list[socket.socket] = []
        with self._lock:
            idle = self._idle.setdefault((host, port), [])
            if len(idle) < _MAX_IDLE_PER_PEER:
                idle.append((now, sock))
            else:
                stale.append(sock)
            if now >= self._next_prune:
                stale.extend(self._prune(now))
        for old in stale:
            old.close()

    def _prune(self, now: float) -> list[socket.socket]:
        # Called with the lock held, at most once per second: forget servers not used for the
        # idle timeout (owners that exited leave nothing behind).
        max_age = current().tcp_idle_timeout_s
        self._next_prune = now + 1.0
        stale: list[socket.socket] = []
        for peer in list(self._idle):
            kept = [(t, s) for t, s in self._idle[peer] if now - t < max_age]
            stale.extend(s for t, s in self._idle[peer] if now - t >= max_age)
            if kept:
                self._idle[peer] = kept
            else:
                del self._idle[peer]
        return stale

    def __len__(self) -> int:
        return sum(len(v) for v in self._idle.values())


def _readable(sock: socket.socket) -> bool:
    # An idle pooled connection has nothing to read: readable means EOF, reset or garbage.
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


_pool = _Pool()
os.register_at_fork(after_in_child=_reset_after_fork)


class _Closing(RDMAError):
    """The server refused the request and closes the connection (do not pool it)."""


class _Stale(Exception):
    """A pooled connection was closed by the server before it answered (safe to retry)."""


def _reply(sock: socket.socket) -> int:
    status, length = _REP.unpack(_recv_bytes(sock, _REP.size))
    if status == _OK:
        return int(length)
    limit = current().tcp_max_request_bytes
    if status not in (_ERR, _BYE) or length > limit:
        raise _Closing(f"malformed RDMA server reply (status {status}, length {length})")
    message = _recv_bytes(sock, length).decode(errors="replace")
    raise (_Closing if status == _BYE else RDMAError)(message)


def _request(sock: socket.socket, header: bytes) -> int:
    """Send a request header and read the first reply; a pooled connection found closed
    before any answer raises :class:`_Stale`."""
    try:
        sock.sendall(header)
        return _reply(sock)
    except ConnectionError as exc:  # EOF, reset or broken pipe: the server never saw it
        raise _Stale(str(exc)) from exc


def _exchange(
    host: str, port: int, deadline: float, what: str, body: Callable[[socket.socket], None]
) -> None:
    for attempt in (0, 1):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise RDMAError(f"RDMA {what} timed out")
        sock, pooled = _pool.take(host, port, remaining)
        try:
            sock.settimeout(remaining)
            body(sock)
        except _Stale as exc:
            sock.close()
            if pooled and attempt == 0:
                continue  # the server closed an idle connection: once more on a fresh one
            raise RDMAError(
                f"RDMA {what} with {host}:{port} failed: the server closed the connection "
                f"(owner gone, or at its connection limit?): {exc}"
            ) from None
        except _Closing:
            sock.close()
            raise
        except RDMAError:
            # The request/reply framing is intact after an error reply: keep the connection.
            _pool.give(host, port, sock)
            raise
        except TimeoutError as exc:
            sock.close()
            raise RDMAError(f"RDMA {what} with {host}:{port} timed out") from exc
        except OSError as exc:
            sock.close()
            raise RDMAError(
                f"RDMA {what} with {host}:{port} failed (owner gone, or the region dropped "
                f"during the transfer?): {exc}"
            ) from exc
        except BaseException:
            sock.close()
            raise
        _pool.give(host, port, sock)
        return


def control_request(desc: Descriptor, op: int, payload: bytes, deadline: float) -> bytes:
    """Send a control request (``OP_DROP``, ``OP_CONNECT``) to ``desc``'s owner and return its answer.

    Raises:
        RDMAError: the owner refused, is unreachable, or did not answer before ``deadline``.
    """
    answer: list[bytes] = []

    def body(sock: socket.socket) -> None:
        header = _REQ.pack(_MAGIC, op, desc.region_id, desc.key, 0, len(payload))
        length = _request(sock, header + payload)
        limit = current().tcp_max_request_bytes
        if length > limit:
            raise _Closing(f"RDMA control answer of {length} bytes over {limit}")
        answer.append(_recv_bytes(sock, length))

    _exchange(desc.tcp_host, desc.tcp_port, deadline, "control request", body)
    return answer[0]


class TcpBackend:
    """Transfers through the owner's RDMA server (any host; needs the owner's process alive)."""

    name = "tcp"

    @staticmethod
    def can_reach(desc: Descriptor) -> bool:
        """Whether ``desc`` can be served over TCP (CPU memory with a server port)."""
        return desc.tcp_port != 0 and desc.device == "cpu"

    def transfer(
        self,
        desc: Descriptor,
        offset: int,
        local_addr: int,
        size: int,
        write: bool,
        deadline: float,
    ) -> None:
        """Move ``size`` bytes between ``local_addr`` and the region at ``offset``.

        Raises:
            RDMAError: refused by the owner (key, bounds, dropped), owner unreachable, timed out.
        """
        view = view_at(local_addr, size)

        def body(sock: socket.socket) -> None:
            op = OP_WRITE if write else OP_READ
            length = _request(sock, _REQ.pack(_MAGIC, op, desc.region_id, desc.key, offset, size))
            if write:
                sock.sendall(view)
                _reply(sock)
            else:
                if length != size:
                    raise OSError(f"server sent {length} bytes, expected {size}")
                _recv_exact(sock, view)

        _exchange(desc.tcp_host, desc.tcp_port, deadline, "read" if not write else "write", body)
