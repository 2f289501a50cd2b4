"""Spawn targets for tests/runtime/test_zygote.py; they run in processes forked by the zygote.

Each gets ``["--fd", N, ...]``: ``N`` is its end of a socketpair the test holds. Stdlib only, so
a fork costs what a proc's would.
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import signal
import socket
import sys
import threading


def _sock(argv: list[str]) -> socket.socket:
    return socket.socket(fileno=int(argv[1]))


def hold(argv: list[str]) -> None:
    """Say ``r``, then block until the test closes its end; exit 0."""
    s = _sock(argv)
    s.sendall(b"r")
    while s.recv(1):
        pass


def exit_with(argv: list[str]) -> None:
    """Exit at once with the code ``argv[2]``."""
    raise SystemExit(int(argv[2]))


def report(argv: list[str]) -> None:
    """Send a JSON report of the state the child started in, then exit 0."""
    s = _sock(argv)
    libc = ctypes.CDLL(None, use_errno=True)
    sig = ctypes.c_int(0)
    libc.prctl(2, ctypes.byref(sig), 0, 0, 0)  # PR_GET_PDEATHSIG
    fds = sorted(int(f) for f in os.listdir("/proc/self/fd"))
    fds = [
        f
        for f in fds
        if os.path.exists(f"/proc/self/fd/{f}")
        and os.readlink(f"/proc/self/fd/{f}") != f"/proc/{os.getpid()}/fd"
    ]
    old_wakeup = signal.set_wakeup_fd(-1)
    np = sys.modules.get("numpy")
    state = {
        "sigint_default": signal.getsignal(signal.SIGINT) is signal.default_int_handler,
        "sigchld_default": signal.getsignal(signal.SIGCHLD) == signal.SIG_DFL,
        "wakeup_fd": old_wakeup,
        "python_threads": threading.active_count(),
        "os_threads": len(os.listdir("/proc/self/task")),
        "pdeathsig": sig.value,
        "environ": dict(os.environ),
        "cwd": os.getcwd(),
        "argv": sys.argv,
        "fds": fds,
        "fd": int(argv[1]),
        "numpy_draw": int(np.random.randint(1 << 30)) if np is not None else None,
        "config_loaded": "monarch.config" in sys.modules,
        "gc_enabled": gc.isenabled(),
    }
    s.sendall(json.dumps(state).encode())
    s.shutdown(socket.SHUT_WR)
