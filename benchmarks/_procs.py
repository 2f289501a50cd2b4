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
import time
import uuid
from dataclasses import dataclass

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
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd,
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    timed_out = False
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        timed_out = True
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        kill_token(token, grace_s=0.5)
        raise
    wall_s = time.perf_counter() - t0
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    leftover = kill_token(token)
    return Completed(proc.returncode, out, err, timed_out, wall_s, leftover)
