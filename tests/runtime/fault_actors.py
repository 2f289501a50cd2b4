"""Actors for the fault tests (importable so procs load them by reference)."""

from __future__ import annotations

import os
import socket
import zlib
from typing import Any

from monarch.actor import Actor, endpoint


def memfd_pinned(pid: int) -> tuple[int, int, int]:
    """(memfd file descriptors, their total size in bytes, bytes of memfd mappings) of ``pid``,
    from /proc: the shared memory that process pins."""
    n = size = 0
    fd_dir = f"/proc/{pid}/fd"
    for fd in os.listdir(fd_dir):
        try:
            if "memfd:" in os.readlink(f"{fd_dir}/{fd}"):
                size += os.stat(f"{fd_dir}/{fd}").st_size
                n += 1
        except OSError:
            continue
    mapped = 0
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            if "/memfd:" in line:
                lo, hi = line.split()[0].split("-")
                mapped += int(hi, 16) - int(lo, 16)
    return n, size, mapped


def _exit_when_loaded() -> Any:
    """Called by ``pickle`` while a :class:`Poison` is loaded: ends the loading thread."""
    raise SystemExit("a poisoned value was unpickled")


class Poison:
    """A value whose unpickling raises ``SystemExit`` in the receiver (pickling it is harmless)."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (_exit_when_loaded, ())


class PoisonError(Exception):
    """An exception whose unpickling raises ``SystemExit`` in the receiver."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (_exit_when_loaded, ())


class Recorder(Actor):
    """Records the tags it is sent, in arrival order."""

    def __init__(self) -> None:
        self.seen: list[int] = []

    @endpoint
    def ping(self) -> int:
        return os.getpid()

    @endpoint
    def note(self, tag: int) -> None:
        self.seen.append(tag)

    @endpoint
    def add(self, tag: int) -> int:
        self.seen.append(tag)
        return tag

    @endpoint
    def noted(self) -> list[int]:
        return list(self.seen)

    @endpoint
    def hold(self, gate: str) -> int:
        """Block until the test closes the Unix socket listening at ``gate`` (at once if it is
        already closed)."""
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(gate)
            s.recv(1)
        except OSError:
            pass
        finally:
            s.close()
        return os.getpid()

    @endpoint
    def boom(self) -> None:
        raise ValueError("boom in a broadcast handler")

    @endpoint
    def poison(self) -> Any:
        return Poison()

    @endpoint
    def poison_error(self) -> None:
        raise PoisonError("cannot be unpickled")

    @endpoint
    def echo(self, data: Any) -> Any:
        return data

    @endpoint
    def crc(self, data: Any) -> int:
        return zlib.crc32(memoryview(data).cast("B"))
