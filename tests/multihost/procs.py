"""Finding and killing processes by what they belong to: a network namespace or a run's state dir.

Scans /proc; zombies are ignored (they hold no resources and their parent reaps them).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator

KILL_TIMEOUT_S = 10.0


def kill_session(proc: subprocess.Popen[str]) -> None:
    """SIGKILL the session of ``proc`` (started with ``start_new_session=True``: it and all it
    started) and reap it, waiting at most ``KILL_TIMEOUT_S``."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(KILL_TIMEOUT_S)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _all_pids() -> Iterator[int]:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            yield int(entry)


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return True
    return stat[stat.rfind(b")") + 2 :].startswith(b"Z")


def pids_in_netns(inode: int) -> set[int]:
    """Live (non-zombie) processes whose network namespace has this inode.

    Args:
        inode: ``st_ino`` of the namespace (``os.stat('/run/netns/NAME')``).

    Returns:
        Their pids; this process is never included.
    """
    me = os.getpid()
    out = set()
    for pid in _all_pids():
        if pid == me:
            continue
        try:
            if os.stat(f"/proc/{pid}/ns/net").st_ino != inode:
                continue
        except OSError:
            continue
        if not _is_zombie(pid):
            out.add(pid)
    return out


def pids_with_cmdline(marker: bytes) -> set[int]:
    """Live (non-zombie) processes whose command line contains ``marker`` (a run's state dir)."""
    me = os.getpid()
    out = set()
    for pid in _all_pids():
        if pid == me:
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read()
        except OSError:
            continue
        if marker in cmd and not _is_zombie(pid):
            out.add(pid)
    return out


def kill_until_gone(find: Callable[[], set[int]], timeout_s: float = KILL_TIMEOUT_S) -> set[int]:
    """SIGKILL every pid ``find()`` returns, again and again, until it returns none.

    Args:
        find: a callable returning the set of pids to kill; called until empty (new ones that
            appear meanwhile, such as forks, are killed too).
        timeout_s: give up after this long.

    Returns:
        The pids still alive at the deadline (empty on success).
    """
    deadline = time.monotonic() + timeout_s
    pids: set[int] = find()
    while pids and time.monotonic() < deadline:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.01)  # poll interval of a bounded wait on a real condition
        pids = find()
    return pids
