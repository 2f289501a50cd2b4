"""``LocalJob`` (this host) and ``ProcessJob`` (N host agents as local processes)."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from typing import IO, Any

from monarch.actor import HostMesh, this_host

from ._trait import DEFAULT_JOB_PATH, JobError, JobState, JobTrait, validate_meshes

__all__ = ["LocalJob", "ProcessJob"]

READY_TIMEOUT_S = 30.0
_KILL_GRACE_S = 5.0
_LISTENING = "monarch host agent listening on "


def agent_argv(python: str, *extra: str) -> list[str]:
    """The command line of a job's agent (:mod:`monarch.job._agent`)."""
    return [python, "-m", "monarch.job._agent", *extra]


def read_address(
    proc: subprocess.Popen[bytes],
    stdout: IO[bytes],
    what: str,
    timeout_s: float,
    log_path: str | None = None,
) -> str:
    """The agent address from the ``listening on`` line ``proc`` prints first.

    Raises:
        JobError: it ended or printed nothing within ``timeout_s`` (with its log's tail).
    """
    deadline = time.monotonic() + timeout_s
    buf = b""
    fd = stdout.fileno()
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        ready = select.select([fd], [], [], max(0.0, left))[0] if left > 0 else []
        if not ready:
            raise JobError(f"{what}: no agent address within {timeout_s} s{_tail(log_path)}")
        chunk = os.read(fd, 4096)
        if not chunk:
            raise JobError(
                f"{what}: the agent ended (status {proc.wait(5)}) before listening{_tail(log_path)}"
            )
        buf += chunk
    line = buf.split(b"\n", 1)[0].decode(errors="replace").strip()
    if not line.startswith(_LISTENING):
        raise JobError(f"{what}: unexpected first line {line!r}{_tail(log_path)}")
    return "tcp://" + line[len(_LISTENING) :].split(":", 1)[1]


def _tail(path: str | None, lines: int = 20) -> str:
    if path is None:
        return ""
    try:
        with open(path, errors="replace") as f:
            text = f.read().splitlines()[-lines:]
    except OSError:
        return ""
    return f"\n--- {path}:\n" + "\n".join(text)


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a live, non-zombie process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


def kill_group(pgid: int, grace_s: float = _KILL_GRACE_S) -> None:
    """SIGTERM process group ``pgid`` (the agent stops its procs), then SIGKILL what is left after ``grace_s``."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and _group_alive(pgid):
        time.sleep(0.02)  # poll interval of a bounded wait for exits
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    # a group of zombies (not yet reaped by their parent) counts as gone
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError):
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
                    return True
    return False


class LocalJob(JobTrait):
    """Every mesh is this host (``this_host()``): the same code as a real job, run here
    (Monarch's ``LocalJob``). Nothing is launched, so nothing is cached.

    Args:
        hosts: the mesh names.

    Raises:
        ValueError: no names, or a name that is not an identifier.
    """

    def __init__(self, hosts: Sequence[str] = ("hosts",)) -> None:
        super().__init__()
        if isinstance(hosts, str):
            hosts = (hosts,)
        self._names = list(validate_meshes({h: 1 for h in hosts}))

    def _spec(self) -> dict[str, Any]:
        return {"kind": "local", "hosts": self._names}

    def _launch(self) -> None:
        self._addresses = {}

    def _alive(self) -> bool:
        return True

    def _stop(self) -> None:
        pass

    def alive(self) -> bool:
        """Always True once applied: this host is up."""
        return self._job_id is not None

    def apply(self, cached_path: str | None = DEFAULT_JOB_PATH) -> None:
        """Mark the job running (nothing to launch; the cache is not used)."""
        if self._job_id is None:
            self._job_id = "local"

    def state(self, cached_path: str | None = DEFAULT_JOB_PATH) -> JobState:
        """Each mesh name -> ``this_host()``."""
        self.apply()
        meshes: dict[str, HostMesh] = {n: this_host() for n in self._names}
        return JobState(meshes)


class ProcessJob(JobTrait):
    """Each host a host agent in a local process on 127.0.0.1 (a free port), authenticated
    with this client's cluster token (a fresh one when none is configured): several "hosts" on
    one machine, for tests and for trying a multi-host program (Monarch's ``ProcessJob``).

    The agents end with the job (:meth:`kill`) and with the process that applied it, even if
    that one is SIGKILLed: each reads a pipe from it and stops when the pipe closes. So another
    process reuses a cached ProcessJob only while the process that launched it runs.

    Args:
        meshes: mesh name -> number of hosts, e.g. ``{"hosts": 2}``.
        env: extra environment variables for the agents (and their procs).
        python_exe: the interpreter of the agents; None: this one.
        log_dir: where each agent's stderr goes (``<mesh>_<i>.log``); None: a fresh temp dir.

    Raises:
        ValueError: a bad mesh name or a non-positive count.
        TypeError: meshes is not a dict of str to int.
    """

    lives_with_client = True

    def __init__(
        self,
        meshes: Mapping[str, int],
        env: Mapping[str, str] | None = None,
        python_exe: str | None = None,
        log_dir: str | None = None,
    ) -> None:
        super().__init__()
        self._meshes = validate_meshes(meshes)
        self._env = dict(env or {})
        self._python = python_exe or sys.executable
        self._log_dir = log_dir
        self._pids: list[int] = []
        self._popens: list[subprocess.Popen[bytes]] | None = None
        self._launcher_pid: int | None = None

    def _spec(self) -> dict[str, Any]:
        return {"kind": "process", "meshes": self._meshes, "env": self._env, "python": self._python}

    def _process_local(self) -> tuple[str, ...]:
        return ("_popens",)

    def _launch(self) -> None:
        import tempfile

        assert self._token is not None
        log_dir = self._log_dir or tempfile.mkdtemp(prefix="monarch-processjob-")
        os.makedirs(log_dir, exist_ok=True)
        env = {**os.environ, **self._env}
        env.pop("MONARCH_CLUSTER_TOKEN", None)  # given on the lifeline pipe, not in the environment
        self._popens = []
        self._pids = []
        self._launcher_pid = os.getpid()
        started: list[tuple[str, subprocess.Popen[bytes], str]] = []
        for mesh, count in self._meshes.items():
            for i in range(count):
                log_path = os.path.join(log_dir, f"{mesh}_{i}.log")
                with open(log_path, "wb") as log:
                    proc = subprocess.Popen(
                        agent_argv(self._python, "--listen", "tcp://127.0.0.1:0", "--token-stdin", "--lifeline"),
                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, env=env, start_new_session=True,
                    )  # fmt: skip
                self._popens.append(proc)
                self._pids.append(proc.pid)
                assert proc.stdin is not None
                proc.stdin.write(self._token.encode() + b"\n")
                proc.stdin.flush()
                started.append((mesh, proc, log_path))
        addresses: dict[str, list[str]] = {m: [] for m in self._meshes}
        for mesh, proc, log_path in started:  # the agents start in parallel; read them in order
            assert proc.stdout is not None
            addresses[mesh].append(
                read_address(
                    proc, proc.stdout, f"ProcessJob agent of {mesh!r}", READY_TIMEOUT_S, log_path
                )
            )
        self._addresses = addresses

    def _alive(self) -> bool:
        return bool(self._pids) and all(pid_alive(p) for p in self._pids)

    def _stop(self) -> None:
        for pid in self._pids:
            kill_group(pid)
        for proc in self._popens or []:
            with contextlib.suppress(OSError):
                if proc.stdin is not None:
                    proc.stdin.close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(_KILL_GRACE_S)
            for f in (proc.stdout,):
                if f is not None:
                    f.close()
        self._popens = None
        self._pids = []
