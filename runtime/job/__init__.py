"""Jobs on real schedulers (Monarch's ``monarch.job``): a job launches one host agent per
machine with an existing launcher (local processes, ssh, Slurm, Kubernetes) and gives its host
meshes by name: ``job.state().trainers``. See docs/jobs.md."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._trait import DEFAULT_JOB_PATH, JobError, JobState, JobTrait, job_load, job_loads
    from .kubernetes import KubernetesJob
    from .process import LocalJob, ProcessJob
    from .slurm import SlurmJob
    from .ssh import SSHJob

__all__ = [
    "DEFAULT_JOB_PATH",
    "JobError",
    "JobState",
    "JobTrait",
    "KubernetesJob",
    "LocalJob",
    "ProcessJob",
    "SSHJob",
    "SlurmJob",
    "job_load",
    "job_loads",
]


# exported lazily: ``monarch job --help`` (which imports this package for its commands) does not
# import the runtime, and the kubernetes client is imported only when a job uses it
_HOMES = {
    "DEFAULT_JOB_PATH": "_trait", "JobError": "_trait", "JobState": "_trait", "JobTrait": "_trait",
    "job_load": "_trait", "job_loads": "_trait", "KubernetesJob": "kubernetes",
    "LocalJob": "process", "ProcessJob": "process", "SlurmJob": "slurm", "SSHJob": "ssh",
}  # fmt: skip


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'monarch.job' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value
    return value
