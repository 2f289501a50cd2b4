"""Jobs on real schedulers (Monarch's ``monarch.job``): a job launches one host agent per
machine with an existing launcher (local processes, ssh, Slurm, Kubernetes) and gives its host
meshes by name: ``job.state().trainers``. See docs/jobs.md."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._trait import DEFAULT_JOB_PATH, JobError, JobState, JobTrait, job_load, job_loads
from .process import LocalJob, ProcessJob
from .slurm import SlurmJob
from .ssh import SSHJob

if TYPE_CHECKING:
    from .kubernetes import KubernetesJob

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


def __getattr__(name: str) -> Any:
    if name == "KubernetesJob":  # the kubernetes client is imported only when a job uses it
        from .kubernetes import KubernetesJob

        return KubernetesJob
    raise AttributeError(f"module 'monarch.job' has no attribute {name!r}")
