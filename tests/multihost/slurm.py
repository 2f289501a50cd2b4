"""A real multi-node Slurm on one machine: one slurmd per namespace host.

``munged`` and ``slurmctld`` run in the root namespace, one ``slurmd -N hX`` inside each
:class:`~tests.multihost.netns.Host` (``NodeName=hX NodeAddr=<host ip>``: node names are the hosts'
hostnames, so ``srun hostname`` prints the node name and ``scontrol show hostnames`` gives names
that resolve inside every host). Every path is under the run's state dir (``%n`` per node), and the
controller listens on a free port, so parallel runs do not collide.

Nothing is installed at test time: CI (.ci/run) installs Debian's ``slurm-wlm`` and ``munge``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tests.multihost.netns import HostNet

REQUIRED_TOOLS = ("munged", "slurmctld", "slurmd", "sinfo", "srun", "sbatch", "scontrol")
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0


def unavailable_reason() -> str | None:
    """Say why a Slurm cluster cannot be started here.

    Returns:
        A sentence for ``pytest.skip``, or None when it can.
    """
    missing = [tool for tool in REQUIRED_TOOLS if shutil.which(tool) is None]
    if missing:
        return (
            f"Slurm needs {', '.join(missing)} (Debian packages slurm-wlm and munge; "
            ".ci/run installs them)"
        )
    return None


def _free_port(ip: str) -> int:
    # The port is free now; slurmctld binds it a moment later. A parallel run taking it in
    # between makes slurmctld fail to start, which the readiness wait reports.
    with socket.socket() as s:
        s.bind((ip, 0))
        return int(s.getsockname()[1])


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return f"({path}: missing)"
    return f"--- {path.name}:\n" + "\n".join(text[-lines:])


class SlurmCluster:
    """munged + slurmctld + one slurmd per host of ``net``, all nodes idle once constructed.

    Use as a context manager (or call :meth:`close`).

    Args:
        net: the hosts that become nodes (all of them, in order: node ``hX`` on host ``X``).
        ready_timeout_s: bound on waiting for every node to be idle.

    Raises:
        RuntimeError: a daemon exited, or the nodes were not all idle after
            ``ready_timeout_s`` (the message has the daemons' log tails).
    """

    def __init__(self, net: HostNet, *, ready_timeout_s: float = READY_TIMEOUT_S) -> None:
        self.net = net
        self.dir = net.state_dir / "slurm"
        self.conf = self.dir / "slurm.conf"
        self.munge_socket = self.dir / "munge" / "munge.socket"
        self.nodes = [host.name for host in net.hosts]
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self.port = 0
        self.setup_s = 0.0
        self._daemons: list[tuple[str, subprocess.Popen[Any]]] = []
        self._closed = False
        started = time.monotonic()
        try:
            self._start(ready_timeout_s)
        except BaseException:
            self.close()
            raise
        self.setup_s = time.monotonic() - started

    def __repr__(self) -> str:
        alive = sum(1 for _, p in self._daemons if p.poll() is None)
        return (
            f"<SlurmCluster nodes={','.join(self.nodes)} port={self.port} "
            f"daemons_alive={alive}/{len(self._daemons)}>"
        )

    def __enter__(self) -> SlurmCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _start(self, ready_timeout_s: float) -> None:
        deadline = time.monotonic() + ready_timeout_s
        for sub in ("munge", "ctld", "spool", "log", "tmp"):
            (self.dir / sub).mkdir(parents=True, mode=0o700)
        self._start_munged(deadline)
        self.port = _free_port(self.net.gateway_ip)
        self._write_conf()
        self._spawn(
            "slurmctld",
            None,
            ["slurmctld", "-D", "-f", str(self.conf)],
        )
        for host in self.net.hosts:
            self._spawn(
                f"slurmd-{host.name}",
                host,
                ["slurmd", "-D", "-N", host.name, "-f", str(self.conf)],
            )
        self._wait_idle(deadline)

    def _spawn(self, name: str, host: Any, argv: Sequence[str]) -> None:
        log = open(self.dir / "log" / f"{name}.out", "wb")
        with log:
            kwargs: dict[str, Any] = dict(
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,
            )
            if host is None:
                proc = subprocess.Popen(list(argv), **kwargs)
            else:
                proc = host.popen(argv, **kwargs)
        self._daemons.append((name, proc))

    def _start_munged(self, deadline: float) -> None:
        munge_dir = self.munge_socket.parent
        key = munge_dir / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        self._spawn(
            "munged",
            None,
            [
                "munged",
                "--foreground",
                "--force",
                f"--socket={self.munge_socket}",
                f"--key-file={key}",
                f"--pid-file={munge_dir / 'munged.pid'}",
                f"--log-file={self.dir / 'log' / 'munged.log'}",
                f"--seed-file={munge_dir / 'munged.seed'}",
            ],
        )
        while True:
            self._check_daemons()
            with socket.socket(socket.AF_UNIX) as s:
                try:
                    s.connect(str(self.munge_socket))
                    return
                except OSError:
                    pass
            if time.monotonic() > deadline:
                raise RuntimeError("munged did not open its socket\n" + self._logs())
            time.sleep(0.02)  # poll interval of a bounded wait on a real condition

    def _write_conf(self) -> None:
        d = self.dir
        cpus = os.cpu_count() or 1
        lines = [
            "ClusterName=box",
            f"SlurmctldHost={socket.gethostname()}({self.net.gateway_ip})",
            f"SlurmctldPort={self.port}",
            "SlurmdPort=6818",  # one slurmd per network namespace: no clash
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={self.munge_socket}",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "JobCompType=jobcomp/none",
            "SwitchType=switch/none",
            "MpiDefault=none",
            "SchedulerType=sched/builtin",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_CPU",
            "SlurmdParameters=config_overrides",
            "ReturnToService=2",
            "MailProg=/bin/true",
            "InactiveLimit=0",
            "KillWait=2",
            "MessageTimeout=10",
            f"StateSaveLocation={d / 'ctld'}",
            f"SlurmctldPidFile={d / 'ctld' / 'slurmctld.pid'}",
            f"SlurmctldLogFile={d / 'log' / 'slurmctld.log'}",
            f"SlurmdSpoolDir={d / 'spool' / '%n'}",
            f"SlurmdPidFile={d / 'spool' / 'slurmd.%n.pid'}",
            f"SlurmdLogFile={d / 'log' / 'slurmd.%n.log'}",
            f"TmpFS={d / 'tmp'}",
            "SlurmctldDebug=info",
            "SlurmdDebug=info",
        ]
        lines += [
            f"NodeName={h.name} NodeAddr={h.ip} NodeHostname={h.name} CPUs={cpus} State=UNKNOWN"
            for h in self.net.hosts
        ]
        lines.append("PartitionName=box Nodes=ALL Default=YES MaxTime=INFINITE State=UP")
        self.conf.write_text("\n".join(lines) + "\n")

    def _check_daemons(self) -> None:
        for name, proc in self._daemons:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}\n" + self._logs())

    def _logs(self) -> str:
        logs = sorted((self.dir / "log").glob("*"))
        return "\n".join(_tail(p) for p in logs)

    def node_states(self) -> dict[str, str]:
        """Each node's state as ``sinfo`` prints it (``idle``, ``alloc``, ``down*``, ...).

        Returns:
            Node name -> state; empty while the controller does not answer.
        """
        proc = self.run(["sinfo", "-h", "-N", "-o", "%N %T"], timeout_s=10.0)
        if proc.returncode != 0:
            return {}
        states = {}
        for line in proc.stdout.splitlines():
            node, _, state = line.partition(" ")
            states[node] = state.strip()
        return states

    def _wait_idle(self, deadline: float) -> None:
        states: dict[str, str] = {}
        while True:
            self._check_daemons()
            states = self.node_states()
            if sorted(states) == sorted(self.nodes) and all(s == "idle" for s in states.values()):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"nodes not idle: {states}\n" + self._logs())
            time.sleep(0.1)  # poll interval of a bounded wait on a real condition

    def run(
        self, argv: Sequence[str], *, timeout_s: float = 60.0, check: bool = False
    ) -> subprocess.CompletedProcess[str]:
        """Run a Slurm client command (``srun``, ``sbatch``, ``squeue``, ...) in the root namespace.

        Args:
            argv: the command; ``SLURM_CONF`` points at this cluster.
            timeout_s: SIGKILL after this many seconds.
            check: raise ``CalledProcessError`` on a non-zero exit status.

        Returns:
            The completed process, text stdout and stderr.

        Raises:
            subprocess.TimeoutExpired: it ran past ``timeout_s`` (it has been killed).
            subprocess.CalledProcessError: ``check`` and a non-zero exit status.
        """
        return subprocess.run(
            list(argv),
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=check,
            stdin=subprocess.DEVNULL,
        )

    def wait_job(self, job_id: str, timeout_s: float = 60.0) -> str:
        """Wait until a job has left the queue (finished, failed or cancelled).

        Args:
            job_id: the id ``sbatch --parsable`` printed.
            timeout_s: bound on the wait.

        Returns:
            Its final state from ``scontrol show job`` (``COMPLETED``, ``FAILED``, ...).

        Raises:
            TimeoutError: still pending or running after ``timeout_s``.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            proc = self.run(["scontrol", "-o", "show", "job", job_id], timeout_s=10.0)
            fields = dict(
                f.split("=", 1) for f in proc.stdout.split() if "=" in f and proc.returncode == 0
            )
            state = fields.get("JobState", "")
            if state and state not in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING"):
                return state
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {state or 'unknown'} after {timeout_s} s")
            time.sleep(0.1)  # poll interval of a bounded wait on a real condition

    def close(self) -> None:
        """SIGKILL every daemon and every job step (everything in the hosts), reap the daemons.

        State and logs go with the net's state dir when the net closes. Idempotent.
        """
        if self._closed:
            return
        self._closed = True
        for _, proc in reversed(self._daemons):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
        for host in self.net.hosts:
            host.kill_all()  # slurmstepd and job tasks, which slurmd forked off its group
        for _, proc in self._daemons:
            proc.wait(timeout=STOP_TIMEOUT_S)
