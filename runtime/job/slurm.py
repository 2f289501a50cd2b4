"""``SlurmJob``: ``sbatch`` a script that ``srun``s one host agent per node.

Works on Slurm 22.05 and later: it uses only ``sbatch --parsable``, ``squeue -h -j ID -o %T``
and ``scancel``, never ``squeue --json`` (whose output changed between releases and which
22.05 does not filter by job, the failure of Monarch's ``SlurmJob`` there). The client finds the
agents by self-registration: each agent writes its address (its node's own, on the route to the
node that ran ``srun``) to ``<log_dir>/<job>/agents/<rank>.addr``, so ``log_dir`` must be on a
disk the nodes and the client share, as Slurm's own output files usually are.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

from ._trait import JobError, JobTrait, validate_meshes

__all__ = ["SlurmJob"]

_ENDED = (
    "BOOT_FAIL",
    "CANCELLED",
    "COMPLETED",
    "DEADLINE",
    "FAILED",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "PREEMPTED",
    "TIMEOUT",
)
_POLL_S = 0.1


class SlurmJob(JobTrait):
    """One Slurm job (one allocation) for all meshes: ``sbatch`` + ``srun`` one agent per node.

    Args:
        meshes: mesh name -> number of nodes, e.g. ``{"trainers": 4}``; the nodes are dealt to
            the meshes in ``SLURM_PROCID`` order.
        partition: ``--partition``; None: the cluster's default.
        gpus_per_node: ``--gpus-per-node``; None: no GPUs requested.
        time_limit: ``--time`` (Slurm's forms: ``MM``, ``HH:MM:SS``, ``D-HH``...); None: the default.
        job_name: ``--job-name``.
        python_exe: the interpreter on the nodes (monarch-idl installed there).
        slurm_args: more ``sbatch`` options, each ``--opt=value`` (written as ``#SBATCH`` lines).
        log_dir: the shared directory of the job's files (Slurm output, agent registrations,
            the token file, mode 0700); None: ``.monarch/slurm`` under the working directory.
        cpus_per_task, mem, account, qos, exclusive: the ``sbatch`` options of the same names.
        job_start_timeout_s: bound on waiting for every agent to register (queueing included);
            None: wait as long as the job is pending or running.

    Raises:
        ValueError: a bad mesh spec, or a non-positive ``gpus_per_node``.
    """

    def __init__(
        self,
        meshes: Mapping[str, int],
        *,
        partition: str | None = None,
        gpus_per_node: int | None = None,
        time_limit: str | None = None,
        job_name: str = "monarch_job",
        python_exe: str | None = None,
        slurm_args: Sequence[str] = (),
        log_dir: str | None = None,
        cpus_per_task: int | None = None,
        mem: str | None = None,
        account: str | None = None,
        qos: str | None = None,
        exclusive: bool = False,
        job_start_timeout_s: float | None = 300.0,
    ) -> None:
        super().__init__()
        self._meshes = validate_meshes(meshes)
        if gpus_per_node is not None and gpus_per_node <= 0:
            raise ValueError(f"SlurmJob: gpus_per_node must be positive, got {gpus_per_node}")
        for arg in slurm_args:
            if not arg.startswith("-"):
                raise ValueError(
                    f"SlurmJob: slurm_args are sbatch options ('--opt=value'), got {arg!r}"
                )
        self._opts = {
            "partition": partition, "gpus-per-node": gpus_per_node, "time": time_limit, "job-name": job_name,
            "cpus-per-task": cpus_per_task, "mem": mem, "account": account, "qos": qos,
        }  # fmt: skip
        self._exclusive = exclusive
        self._slurm_args = list(slurm_args)
        self._python = python_exe or sys.executable
        self._log_dir = os.path.abspath(log_dir or os.path.join(".monarch", "slurm"))
        self._timeout_s = job_start_timeout_s
        self._slurm_job_id: str | None = None
        self._dir: str | None = None

    @property
    def slurm_job_id(self) -> str | None:
        """The Slurm job id once submitted."""
        return self._slurm_job_id

    def _spec(self) -> dict[str, Any]:
        return {"kind": "slurm", "meshes": self._meshes, "opts": self._opts, "exclusive": self._exclusive, "args": self._slurm_args, "python": self._python}  # fmt: skip

    def batch_script(self, job_dir: str) -> str:
        """The ``sbatch`` script for a job whose files go to ``job_dir``."""
        nodes = sum(self._meshes.values())
        lines = [
            "#!/bin/bash",
            f"#SBATCH --nodes={nodes}",
            "#SBATCH --ntasks-per-node=1",
            f"#SBATCH --output={job_dir}/slurm-%j.out",
        ]
        lines += [f"#SBATCH --{k}={v}" for k, v in self._opts.items() if v is not None]
        if self._exclusive:
            lines.append("#SBATCH --exclusive")
        lines += [f"#SBATCH {a}" for a in self._slurm_args]
        agent = shlex.join([
            self._python, "-m", "monarch.job._agent", "--listen", "tcp://0.0.0.0:0",
            "--token-file", f"{job_dir}/token", "--register", f"{job_dir}/agents",
        ])  # fmt: skip
        # each task registers as its SLURM_PROCID and advertises its address on the route to
        # the node that ran srun (hostnames may resolve to loopback on the nodes)
        lines += [
            "set -eu",
            f"exec srun --nodes={nodes} --ntasks-per-node=1 --kill-on-bad-exit=1 bash -c "
            + shlex.quote(
                f'exec {agent} --register-name "$SLURM_PROCID" --advertise-route-to "$SLURM_LAUNCH_NODE_IPADDR"'
            ),
        ]
        return "\n".join(lines) + "\n"

    def _launch(self) -> None:
        assert self._token is not None and self._job_id is not None
        sbatch = shutil.which("sbatch")
        if sbatch is None:
            raise JobError(
                "SlurmJob: sbatch is not on PATH: run this on a Slurm login node (or install slurm-client)"
            )
        job_dir = os.path.join(self._log_dir, self._job_id)
        os.makedirs(os.path.join(job_dir, "agents"), mode=0o700)
        os.chmod(job_dir, 0o700)
        fd = os.open(os.path.join(job_dir, "token"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self._token + "\n")
        self._dir = job_dir
        env = {k: v for k, v in os.environ.items() if k != "MONARCH_CLUSTER_TOKEN"}
        proc = subprocess.run(
            [sbatch, "--parsable"],
            input=self.batch_script(job_dir),
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
        if proc.returncode != 0:
            raise JobError(f"SlurmJob: sbatch failed ({proc.returncode}): {proc.stderr.strip()}")
        self._slurm_job_id = proc.stdout.strip().split(";")[0]
        if not self._slurm_job_id.isdigit():
            raise JobError(f"SlurmJob: cannot read a job id from sbatch's output {proc.stdout!r}")
        self._addresses = self._wait_for_agents(job_dir)

    def _squeue_state(self) -> str | None:
        """The job's state (``PENDING``, ``RUNNING``...), or None once it left the queue."""
        squeue = shutil.which("squeue")
        if squeue is None or self._slurm_job_id is None:
            return None
        proc = subprocess.run(
            [squeue, "-h", "-j", self._slurm_job_id, "-o", "%T"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        state = proc.stdout.strip()
        return (state or None) if proc.returncode == 0 else None

    def _wait_for_agents(self, job_dir: str) -> dict[str, list[str]]:
        total = sum(self._meshes.values())
        reg = os.path.join(job_dir, "agents")
        deadline = None if self._timeout_s is None else time.monotonic() + self._timeout_s
        last_check = 0.0
        while True:
            names = [n for n in os.listdir(reg) if n.endswith(".addr")]
            if len(names) >= total:
                break
            now = time.monotonic()
            if now - last_check > 1.0:  # the queue, once a second
                last_check = now
                state = self._squeue_state()
                if state is None or state in _ENDED:
                    raise JobError(
                        f"SlurmJob: job {self._slurm_job_id} ended ({state or 'left the queue'}) before its agents registered{self._output_tail()}"
                    )
            if deadline is not None and now > deadline:
                raise JobError(
                    f"SlurmJob: {len(names)}/{total} agents registered within {self._timeout_s} s (job {self._slurm_job_id}, {self._squeue_state()}){self._output_tail()}"
                )
            time.sleep(_POLL_S)  # poll interval of a bounded wait for registration files
        by_rank = sorted((int(n[: -len(".addr")]), n) for n in names)
        addrs = []
        for _, n in by_rank:
            with open(os.path.join(reg, n)) as f:
                addrs.append("tcp://" + f.read().strip().split(":", 1)[1])
        out, k = {}, 0
        for mesh, count in self._meshes.items():
            out[mesh] = addrs[k : k + count]
            k += count
        return out

    def _output_tail(self) -> str:
        if self._dir is None or self._slurm_job_id is None:
            return ""
        path = os.path.join(self._dir, f"slurm-{self._slurm_job_id}.out")
        try:
            with open(path, errors="replace") as f:
                return f"\n--- {path}:\n" + "\n".join(f.read().splitlines()[-20:])
        except OSError:
            return ""

    def _alive(self) -> bool:
        return self._squeue_state() == "RUNNING"

    def _stop(self) -> None:
        if self._slurm_job_id is None:
            return
        scancel = shutil.which("scancel")
        if scancel is None:
            raise JobError(
                f"SlurmJob: scancel is not on PATH: cannot cancel job {self._slurm_job_id}"
            )
        proc = subprocess.run(
            [scancel, self._slurm_job_id], capture_output=True, text=True, timeout=60
        )
        if proc.returncode != 0:
            raise JobError(f"SlurmJob: scancel {self._slurm_job_id} failed: {proc.stderr.strip()}")
        self._slurm_job_id = None
