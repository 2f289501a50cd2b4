"""Wait for processes that are not our children to exit, on an event (pidfd), with a timeout."""

from __future__ import annotations

import os
import select
import time
from collections.abc import Iterable

__all__ = ["wait_exited"]


def wait_exited(pids: Iterable[int], timeout_s: float) -> list[int]:
    """Block until every process in ``pids`` has exited (a zombie counts as exited), or until
    ``timeout_s`` seconds have passed; return the pids still running (sorted, empty when all
    exited). Uses a pidfd per process (Linux >= 5.3), so it wakes on the exit itself."""
    deadline = time.monotonic() + timeout_s
    left: dict[int, int] = {}
    try:
        for pid in pids:
            try:
                left[os.pidfd_open(pid)] = pid
            except ProcessLookupError:
                pass  # already exited and reaped
        poller = select.poll()
        for fd in left:
            poller.register(fd, select.POLLIN)
        while left:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            for fd, _ in poller.poll(remaining * 1000):
                poller.unregister(fd)
                os.close(fd)
                del left[fd]
        return sorted(left.values())
    finally:
        for fd in left:
            os.close(fd)
