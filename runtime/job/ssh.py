"""``SSHJob``: one host agent per machine, started over ``ssh``."""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

from ._trait import JobError, JobTrait, validate_meshes
from .process import READY_TIMEOUT_S, agent_argv, kill_group, pid_alive, read_address

__all__ = ["SSHJob"]


class SSHJob(JobTrait):
    """Starts a host agent on each host with the ``ssh`` binary (your keys, your
    ``~/.ssh/config``), and attaches to them.

    Each agent listens on ``0.0.0.0:port`` there and advertises the host as given (so give
    names or addresses the client and the other hosts can reach). The cluster token travels on
    the ssh session's stdin, never on a command line; the session's stdin is also the agent's
    lifeline: the agent stops (killing its procs) when the ssh client ends, so the agents end
    with :meth:`kill` and with the process that applied the job, even if it is SIGKILLed.

    Args:
        hosts: ``[user@]host`` per host, in rank order; with ``meshes``, the hosts are dealt to
            the meshes in order.
        meshes: mesh name -> host count (their sum must be ``len(hosts)``); None:
            ``{"hosts": len(hosts)}``.
        ssh_args: options before the host, e.g. ``["-i", "KEY", "-p", "2222", "-o",
            "StrictHostKeyChecking=no"]``; ``BatchMode=yes`` is always added.
        python_exe: the interpreter on the hosts (monarch-idl installed there).
        port: the agents' port; 0: each picks a free one.
        workdir: ``cd`` there on the host first; None: the login directory.
        ssh_exe: the ssh binary.

    Raises:
        ValueError: no hosts, a bad mesh spec, or counts that do not add up to the hosts.
    """

    lives_with_client = True

    def __init__(
        self,
        hosts: Sequence[str],
        meshes: Mapping[str, int] | None = None,
        *,
        ssh_args: Sequence[str] = (),
        python_exe: str = "python3",
        port: int = 0,
        workdir: str | None = None,
        ssh_exe: str = "ssh",
    ) -> None:
        super().__init__()
        if isinstance(hosts, str) or not hosts:
            raise ValueError("SSHJob: hosts must be a non-empty list of '[user@]host'")
        self._hosts = list(hosts)
        self._meshes = validate_meshes(
            meshes if meshes is not None else {"hosts": len(self._hosts)}
        )
        if sum(self._meshes.values()) != len(self._hosts):
            raise ValueError(
                f"SSHJob: the meshes ask for {sum(self._meshes.values())} hosts, {len(self._hosts)} given"
            )
        if not 0 <= port < 65536:
            raise ValueError(f"SSHJob: port {port} out of range")
        self._ssh_args = list(ssh_args)
        self._python = python_exe
        self._port = port
        self._workdir = workdir
        self._ssh = ssh_exe
        self._pids: list[int] = []
        self._popens: list[subprocess.Popen[bytes]] | None = None

    def _spec(self) -> dict[str, Any]:
        return {"kind": "ssh", "hosts": self._hosts, "meshes": self._meshes, "ssh_args": self._ssh_args, "python": self._python, "port": self._port, "workdir": self._workdir}  # fmt: skip

    def _process_local(self) -> tuple[str, ...]:
        return ("_popens",)

    def _remote_command(self, host: str) -> str:
        advertise = host.rsplit("@", 1)[-1]
        argv = agent_argv(
            self._python,
            "--listen",
            f"tcp://0.0.0.0:{self._port}",
            "--advertise",
            advertise,
            "--token-stdin",
            "--lifeline",
        )
        cmd = "exec " + shlex.join(argv)
        return cmd if self._workdir is None else f"cd {shlex.quote(self._workdir)} && {cmd}"

    def _launch(self) -> None:
        assert self._token is not None
        if shutil.which(self._ssh) is None:
            raise JobError(
                f"SSHJob: the ssh client {self._ssh!r} is not on PATH (Debian: apt-get install openssh-client)"
            )
        log_dir = tempfile.mkdtemp(prefix="monarch-sshjob-")
        self._popens, self._pids = [], []
        started = []
        for i, host in enumerate(self._hosts):
            log_path = os.path.join(log_dir, f"{i}-{host.replace('/', '_')}.log")
            argv = [
                self._ssh,
                "-o",
                "BatchMode=yes",
                *self._ssh_args,
                host,
                self._remote_command(host),
            ]
            with open(log_path, "wb") as log:
                proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=log,
                    start_new_session=True,
                )
            self._popens.append(proc)
            self._pids.append(proc.pid)
            assert proc.stdin is not None
            proc.stdin.write(self._token.encode() + b"\n")
            proc.stdin.flush()
            started.append((host, proc, log_path))
        addrs = []
        for host, proc, log_path in started:
            assert proc.stdout is not None
            addrs.append(
                read_address(
                    proc, proc.stdout, f"SSHJob agent on {host}", READY_TIMEOUT_S, log_path
                )
            )
        self._addresses, k = {}, 0
        for mesh, count in self._meshes.items():
            self._addresses[mesh] = addrs[k : k + count]
            k += count

    def _alive(self) -> bool:
        return bool(self._pids) and all(pid_alive(p) for p in self._pids)

    def _stop(self) -> None:
        # closing the ssh session closes the agent's lifeline: it stops and kills its procs
        for proc in self._popens or []:
            with contextlib.suppress(OSError):
                if proc.stdin is not None:
                    proc.stdin.close()
        for proc in self._popens or []:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10.0)
        for pid in self._pids:  # another process's ssh clients, or ones that did not end
            if pid_alive(pid):
                kill_group(pid)
        for proc in self._popens or []:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5.0)
            if proc.stdout is not None:
                proc.stdout.close()
        self._popens = None
        self._pids = []
