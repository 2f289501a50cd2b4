"""SlurmJob's batch script and argument checks (no Slurm needed; the end-to-end run is tests/multihost/test_jobs.py)."""

from __future__ import annotations

import pytest
from monarch.job import SlurmJob


def test_batch_script_requests_the_nodes_and_srun_starts_one_registering_agent_per_node() -> None:
    job = SlurmJob(meshes={"trainers": 3, "data": 1}, partition="gpu", gpus_per_node=8, time_limit="01:00:00", python_exe="/venv/bin/python", slurm_args=["--constraint=h100"])  # fmt: skip
    script = job.batch_script("/shared/job")
    lines = script.splitlines()
    assert lines[0] == "#!/bin/bash"
    for directive in (
        "--nodes=4",
        "--ntasks-per-node=1",
        "--partition=gpu",
        "--gpus-per-node=8",
        "--time=01:00:00",
        "--constraint=h100",
    ):
        assert f"#SBATCH {directive}" in lines
    srun = lines[-1]
    assert srun.startswith("exec srun --nodes=4 --ntasks-per-node=1")
    assert (
        "/venv/bin/python -m monarch.job._agent" in srun and "--register /shared/job/agents" in srun
    )
    assert '--register-name "$SLURM_PROCID"' in srun and "--token-file /shared/job/token" in srun
    assert "json" not in script  # never Slurm's version-dependent JSON


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"meshes": {"trainers": 0}}, ValueError, "must be positive"),
        ({"meshes": {}}, ValueError, "meshes is empty"),
        ({"meshes": {"t": 1}, "gpus_per_node": 0}, ValueError, "gpus_per_node must be positive"),
        ({"meshes": {"t": 1}, "slurm_args": ["constraint=h100"]}, ValueError, "sbatch options"),
    ],
)
def test_bad_slurm_job_arguments_are_refused(
    kwargs: dict, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        SlurmJob(**kwargs)
