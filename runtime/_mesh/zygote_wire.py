"""The fork server's wire protocol: frames, spawn requests and replies (both sides).

One ``socketpair``, private to a client and its zygote, carries a stream of frames, each a
header ``<IH`` (body length in bytes, number of file descriptors sent with the frame) and a body.
Requests (client -> zygote) are JSON objects (:func:`encode_request`) with exactly one
descriptor, the proc's listening socket, passed with ``SCM_RIGHTS``; replies (zygote -> client)
are ``<Bii`` records: a kind (the ``K_*`` constants) and two integers. Both sides read with a
:class:`FrameReader`, so any number of frames may arrive in one read and a frame may span reads.
"""

from __future__ import annotations

import array
import json
import os
import socket
import struct
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

__all__ = [
    "GUARD_ENV",
    "HEADER",
    "K_EXITED",
    "K_FAILED",
    "K_HELLO",
    "K_REFUSED",
    "K_SPAWNED",
    "MAX_FDS_PER_FRAME",
    "MAX_REQUEST_BYTES",
    "REPLY",
    "STARTUP_ENV",
    "FrameReader",
    "ProtocolViolation",
    "Request",
    "encode_request",
    "parse_request",
    "send_frame",
]

GUARD_ENV = "MONARCH_IN_ZYGOTE"
"""Set to ``"1"`` in the environment of the zygote and of every process it forks."""

MAX_REQUEST_BYTES = 16 << 20  # argv + environment + sys.path of one proc; far above any real one
MAX_FDS_PER_FRAME = 1
_MAX_QUEUED_FDS = 64
HEADER = struct.Struct("<IH")  # body length in bytes, number of descriptors sent with the frame
REPLY = struct.Struct("<Bii")  # kind, two integers (see the K_* kinds)
_CHUNK = 1 << 16

# reply kinds, zygote -> client
K_HELLO = ord("H")  # (zygote pid, 0): preloads done, serving
K_SPAWNED = ord("P")  # (request id, pid)
K_FAILED = ord("F")  # (request id, errno): fork() failed
K_REFUSED = ord("R")  # (request id, index into STARTUP_ENV, or -1: a thread is running)
K_EXITED = ord("E")  # (pid, wait status)

# Read once, at interpreter start or at the import of a preloaded module (the dynamic loader,
# CPython's startup, OpenBLAS/OpenMP thread pools of numpy): a forked proc would silently keep
# the zygote's values, so a spawn that asks for other values is refused.
STARTUP_ENV = (
    "LD_LIBRARY_PATH",
    "LD_PRELOAD",
    "PYTHONHASHSEED",
    "PYTHONMALLOC",
    "PYTHONOPTIMIZE",
    "PYTHONDEVMODE",
    "PYTHONWARNINGS",
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "GOTO_NUM_THREADS",
)


class ProtocolViolation(Exception):
    """A frame that breaks the zygote protocol (internal; the connection is dropped)."""


def send_frame(sock: socket.socket, body: bytes, fds: list[int] | None = None) -> None:
    """Write one frame (blocking); ``fds`` travel with its first byte."""
    data = HEADER.pack(len(body), len(fds or ())) + body
    if fds:
        sent = sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
    else:
        sent = sock.send(data)
    if sent < len(data):
        sock.sendall(data[sent:])


class FrameReader:
    """Buffered reader of frames: any number per read, any frame across reads.

    Descriptors arrive with the first byte of the frame that announced them, so they queue in
    order and each complete frame takes as many as its header says.

    Args:
        sock: the connected socket to read (blocking).
        max_body_bytes: the largest frame body accepted, in bytes.
        max_fds_per_frame: the most descriptors one frame may announce.
    """

    def __init__(self, sock: socket.socket, max_body_bytes: int, max_fds_per_frame: int) -> None:
        self._sock = sock
        self._max_body = max_body_bytes
        self._max_fds = max_fds_per_frame
        self._anc_bytes = socket.CMSG_SPACE(max(1, max_fds_per_frame) * array.array("i").itemsize)
        self._buf = bytearray()
        self._fds: deque[int] = deque()

    def __repr__(self) -> str:
        return f"<FrameReader buffered={len(self._buf)} bytes fds={len(self._fds)}>"

    def read_some(self) -> bool:
        """One ``recvmsg``; False at a clean end of stream.

        Raises:
            ProtocolViolation: descriptors were truncated, too many queued, or the stream ended
                inside a frame.
            OSError: the socket failed.
        """
        data, anc, flags, _addr = self._sock.recvmsg(
            _CHUNK, self._anc_bytes, socket.MSG_CMSG_CLOEXEC
        )
        for level, kind, raw in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds = array.array("i")
                fds.frombytes(raw[: len(raw) - len(raw) % fds.itemsize])
                self._fds.extend(fds)
        if flags & socket.MSG_CTRUNC:
            raise ProtocolViolation("more descriptors than a frame may carry")
        if len(self._fds) > _MAX_QUEUED_FDS:
            raise ProtocolViolation(f"{len(self._fds)} descriptors queued without their frames")
        if not data:
            if self._buf:
                raise ProtocolViolation(
                    f"the stream ended inside a frame ({len(self._buf)} bytes read)"
                )
            return False
        self._buf += data
        return True

    def frames(self) -> Iterator[tuple[bytes, list[int]]]:
        """The complete frames read so far, each with its descriptors (the caller owns them).

        Raises:
            ProtocolViolation: a frame is too large, announces too many descriptors, or came
                without the descriptors it announced.
        """
        while len(self._buf) >= HEADER.size:
            size, nfds = HEADER.unpack_from(self._buf)
            if size > self._max_body:
                raise ProtocolViolation(f"frame of {size} bytes (at most {self._max_body})")
            if nfds > self._max_fds:
                raise ProtocolViolation(
                    f"frame announces {nfds} descriptors (at most {self._max_fds})"
                )
            end = HEADER.size + size
            if len(self._buf) < end:
                return
            if len(self._fds) < nfds:
                raise ProtocolViolation(
                    f"frame announces {nfds} descriptors, {len(self._fds)} arrived"
                )
            body = bytes(self._buf[HEADER.size : end])
            del self._buf[:end]
            yield body, [self._fds.popleft() for _ in range(nfds)]

    def pending_fds(self) -> list[int]:
        """Descriptors received for frames not complete yet."""
        return list(self._fds)

    def close_fds(self) -> None:
        """Close the descriptors received for frames not complete yet."""
        while self._fds:
            try:
                os.close(self._fds.popleft())
            except OSError:
                pass


@dataclass(frozen=True)
class Request:
    """One spawn request, as the zygote reads it."""

    rid: int
    target: str  # "module:function", called with argv
    argv: list[str]
    env: dict[str, str]
    cwd: str
    path: list[str]  # sys.path
    preload: list[str] = field(default_factory=list)  # modules to import before the fork


def encode_request(
    rid: int,
    target: str,
    argv: list[str],
    env: dict[str, str],
    cwd: str,
    path: list[str],
    preload: list[str] | None = None,
) -> bytes:
    """The body of a spawn request (see :class:`Request` for the fields)."""
    req: dict[str, object] = {
        "id": rid,
        "target": target,
        "argv": argv,
        "env": env,
        "cwd": cwd,
        "path": path,
    }
    if preload:
        req["preload"] = preload
    return json.dumps(req).encode()


def parse_request(body: bytes) -> Request:
    """Decode and check a spawn request's body.

    Raises:
        ProtocolViolation: it is not JSON, lacks a field (all but ``preload`` are required), or
            has a field of the wrong type.
    """
    try:
        req = json.loads(body)
        r = Request(
            req["id"],
            req["target"],
            req["argv"],
            req["env"],
            req["cwd"],
            req["path"],
            req.get("preload", []),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise ProtocolViolation(f"malformed spawn request: {exc!r}") from exc
    if not (
        isinstance(r.rid, int)
        and isinstance(r.target, str)
        and r.target.count(":") == 1
        and isinstance(r.argv, list)
        and all(isinstance(a, str) for a in r.argv)
        and isinstance(r.env, dict)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in r.env.items())
        and isinstance(r.cwd, str)
        and isinstance(r.path, list)
        and all(isinstance(p, str) for p in r.path)
        and isinstance(r.preload, list)
        and all(isinstance(m, str) for m in r.preload)
    ):
        raise ProtocolViolation("spawn request with fields of the wrong types")
    return r
