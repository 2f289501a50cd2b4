"""The ``tcp`` backend and the per-proc RDMA server.

The server runs in the owner process on its own threads (one accept thread, one thread per
connection), never on the actor's event loop. Reads are answered with ``sendall`` straight from
the registered memory; writes are received with ``recv_into`` straight into it. The same server is
the owner's control channel for drops requested by other processes and for setting up ibverbs
queue pairs.

Wire format (little-endian), one request at a time per connection:

- request: ``magic "MRT1", op u8, 3 pad, region u64, key u64, offset u64, length u64``; a
  ``CONNECT`` request is followed by ``length`` bytes of JSON.
- reply: ``status u8, 7 pad, length u64``; status 0 is OK, 1 an error whose UTF-8 message follows.
  ``READ``: OK then ``length`` bytes. ``WRITE``: OK ("send"), then the client sends ``length``
  bytes, then a final reply. ``DROP``: a final reply. ``CONNECT``: OK then ``length`` bytes of JSON.
"""

from __future__ import annotations

import logging
import os
import socket
import struct
import threading
import time
from collections.abc import Callable

from monarch._core.errors import RDMAError

from ._descriptor import Descriptor
from ._memory import view_at
from ._registry import Region, get_registry

__all__ = ["RDMAServer", "TcpBackend", "control_request", "get_server"]

logger = logging.getLogger(__name__)

_REQ = struct.Struct("<4sB3xQQQQ")
_REP = struct.Struct("<B7xQ")
_MAGIC = b"MRT1"
OP_READ, OP_WRITE, OP_DROP, OP_CONNECT = 1, 2, 3, 4
_OK, _ERR = 0, 1
_MAX_CONTROL_BYTES = 1 << 16

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
        self._thread = threading.Thread(
            target=self._accept_loop, name="monarch-rdma-server", daemon=True
        )
        self._thread.start()

    def __repr__(self) -> str:
        return f"<RDMAServer {self.host}:{self.port} pid={os.getpid()} closed={self._closed}>"

    def close(self) -> None:
        """Stop accepting connections (open connections end with their peers)."""
        self._closed = True
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(
                target=self._serve, args=(conn,), name="monarch-rdma-conn", daemon=True
            ).start()

    def _serve(self, conn: socket.socket) -> None:
        header = bytearray(_REQ.size)
        try:
            with conn:
                while True:
                    try:
                        _recv_exact(conn, memoryview(header))
                    except (ConnectionError, OSError):
                        return
                    magic, op, region_id, key, offset, length = _REQ.unpack(header)
                    if magic != _MAGIC:
                        logger.warning("RDMA server: bad request magic; closing the connection")
                        return
                    self._handle(conn, op, region_id, key, offset, length)
        except (ConnectionError, OSError) as exc:
            logger.debug("RDMA server connection ended: %s", exc)

    @staticmethod
    def _error(conn: socket.socket, message: str) -> None:
        raw = message.encode()
        conn.sendall(_REP.pack(_ERR, len(raw)) + raw)

    def _region(self, region_id: int, key: int, offset: int, length: int, write: bool) -> Region:
        region = get_registry().lookup(region_id, key)
        if offset + length > region.memory.size:
            raise RDMAError(
                f"RDMA access [{offset}, {offset + length}) out of bounds of {region.memory.size} bytes"
            )
        if write and not region.memory.writable:
            raise RDMAError(f"RDMA region {region_id} is read-only")
        return region

    def _handle(
        self, conn: socket.socket, op: int, region_id: int, key: int, offset: int, length: int
    ) -> None:
        if op == OP_CONNECT:
            if length > _MAX_CONTROL_BYTES:
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
        try:
            if op == OP_DROP:
                self._on_drop(region_id, key)
                conn.sendall(_REP.pack(_OK, 0))
                return
            if op not in (OP_READ, OP_WRITE):
                raise RDMAError(f"unknown RDMA request {op}")
            region = self._region(region_id, key, offset, length, op == OP_WRITE)
        except RDMAError as exc:
            self._error(conn, str(exc))
            return
        view = view_at(region.memory.addr + offset, length)
        if op == OP_READ:
            conn.sendall(_REP.pack(_OK, length))
            conn.sendall(view)
            return
        conn.sendall(_REP.pack(_OK, length))
        _recv_exact(conn, view)
        if region.valid:
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
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: dict[tuple[str, int], list[socket.socket]] = {}

    def take(self, host: str, port: int, timeout_s: float) -> socket.socket:
        with self._lock:
            idle = self._idle.get((host, port))
            if idle:
                return idle.pop()
        try:
            sock = socket.create_connection((host, port), timeout=max(timeout_s, 0.001))
        except OSError as exc:
            raise RDMAError(
                f"cannot reach the RDMA server at {host}:{port} (owner gone?): {exc}"
            ) from exc
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def give(self, host: str, port: int, sock: socket.socket) -> None:
        with self._lock:
            self._idle.setdefault((host, port), []).append(sock)


_pool = _Pool()
os.register_at_fork(after_in_child=_reset_after_fork)


def _reply(sock: socket.socket) -> int:
    status, length = _REP.unpack(_recv_bytes(sock, _REP.size))
    if status != _OK:
        raise RDMAError(_recv_bytes(sock, min(length, _MAX_CONTROL_BYTES)).decode(errors="replace"))
    return int(length)


def _exchange(
    host: str, port: int, deadline: float, what: str, body: Callable[[socket.socket], None]
) -> None:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise RDMAError(f"RDMA {what} timed out")
    sock = _pool.take(host, port, remaining)
    try:
        sock.settimeout(remaining)
        body(sock)
    except RDMAError:
        # The request/reply framing is intact after an error reply: keep the connection.
        _pool.give(host, port, sock)
        raise
    except TimeoutError as exc:
        sock.close()
        raise RDMAError(f"RDMA {what} with {host}:{port} timed out") from exc
    except OSError as exc:
        sock.close()
        raise RDMAError(f"RDMA {what} with {host}:{port} failed (owner gone?): {exc}") from exc
    except BaseException:
        sock.close()
        raise
    _pool.give(host, port, sock)


def control_request(desc: Descriptor, op: int, payload: bytes, deadline: float) -> bytes:
    """Send a control request (``OP_DROP``, ``OP_CONNECT``) to ``desc``'s owner and return its answer.

    Raises:
        RDMAError: the owner refused, is unreachable, or did not answer before ``deadline``.
    """
    answer: list[bytes] = []

    def body(sock: socket.socket) -> None:
        sock.sendall(_REQ.pack(_MAGIC, op, desc.region_id, desc.key, 0, len(payload)) + payload)
        answer.append(_recv_bytes(sock, _reply(sock)))

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
            sock.sendall(_REQ.pack(_MAGIC, op, desc.region_id, desc.key, offset, size))
            length = _reply(sock)
            if write:
                sock.sendall(view)
                _reply(sock)
            else:
                if length != size:
                    raise OSError(f"server sent {length} bytes, expected {size}")
                _recv_exact(sock, view)

        _exchange(desc.tcp_host, desc.tcp_port, deadline, "read" if not write else "write", body)
