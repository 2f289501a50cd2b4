"""Process hygiene for the benchmark orchestrator: no process started by a run survives it.

Every workload runs in its own session (so its process group can be killed as a whole) with a
run token in its environment. Actor runtimes put their procs in process groups of their own
(torchmonarch does), so after each workload the orchestrator also kills every process whose
environment carries the token; it is made a child subreaper so that such orphans are reparented
to it and can be reaped.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from typing import Any

TOKEN_VAR = "MONARCH_BENCH_RUN_TOKEN"
PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> None:
    """Makes orphaned descendants reparent to this process (Linux; no-op elsewhere)."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def new_token() -> str:
    return uuid.uuid4().hex


def pids_with_token(token: str) -> list[int]:
    """Pids of live processes whose environment holds ``TOKEN_VAR=token``."""
    needle = f"{TOKEN_VAR}={token}".encode()
    me = os.getpid()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                env = f.read()
        except OSError:
            continue
        if needle in env.split(b"\0"):
            found.append(int(entry))
    return found


def reap_zombies() -> None:
    """Reaps exited children (orphans reparented to us as subreaper)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def kill_token(token: str, grace_s: float = 2.0) -> int:
    """SIGTERMs, then SIGKILLs, every process carrying ``token``; returns how many there were."""
    pids = pids_with_token(token)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        reap_zombies()
        if not _alive(pids):
            break
        time.sleep(0.05)
    for pid in _alive(pids):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    time.sleep(0.05)
    reap_zombies()
    return len(pids)


def _alive(pids: list[int]) -> list[int]:
    out = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state != b"Z":
            out.append(pid)
    return out


def _kill_group(proc: subprocess.Popen[Any]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


@dataclass
class Completed:
    returncode: int | None
    stdout: str
    stderr: str
    timed_out: bool
    wall_s: float
    leftover: int


def run_isolated(
    cmd: list[str], *, env: dict[str, str], cwd: str, timeout_s: float, token: str
) -> Completed:
    """Runs ``cmd`` in a new session; kills its group on timeout and sweeps ``token`` after.

    ``leftover`` counts processes that still carried the token after the command exited (a
    runtime that does not stop its procs); they are killed either way.
    """
    env = {**env, TOKEN_VAR: token}
    # Output goes to files, not pipes: a runtime's orphaned procs inherit the descriptors, and
    # waiting for EOF on a pipe would wait for them too.
    with tempfile.TemporaryFile("w+") as out_f, tempfile.TemporaryFile("w+") as err_f:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            cmd, env=env, cwd=cwd, stdout=out_f, stderr=err_f, start_new_session=True
        )
        timed_out = False
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
        except BaseException:
            _kill_group(proc)
            kill_token(token, grace_s=0.5)
            raise
        finally:
            wall_s = time.perf_counter() - t0
        _kill_group(proc)
        if not timed_out:  # procs may still be finishing an orderly shutdown
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline and _alive(pids_with_token(token)):
                reap_zombies()
                time.sleep(0.05)
        leftover = kill_token(token)
        out_f.seek(0)
        err_f.seek(0)
        out, err = out_f.read(), err_f.read()
    return Completed(proc.returncode, out, err, timed_out, wall_s, leftover)
