"""monarch.job on real launchers in namespace hosts: SlurmJob on a real Slurm (sbatch + srun),
SSHJob over a real sshd. Each client is its own process in the root namespace
(``tests/job/_job_client.py``); everything is killed at teardown and checked gone."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.multihost.netns import HostNet
from tests.multihost.procs import pids_with_cmdline
from tests.multihost.slurm import SlurmCluster
from tests.multihost.sshd import SshServer

pytestmark = pytest.mark.multihost

ROOT = Path(__file__).resolve().parents[2]
AGENT_MARKER = b"monarch.job._agent"


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MONARCH_")}
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra or {})
    return env


def _client(
    request: pytest.FixtureRequest, spec: str, cache: Path, *flags: str, env: dict[str, str]
) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.job._job_client", spec, str(cache), *flags],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT,
        start_new_session=True,
    )  # fmt: skip

    def kill() -> None:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)

    request.addfinalizer(kill)
    return proc


def _result(proc: subprocess.Popen[str], timeout_s: float = 180.0) -> dict:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout_s)
    line = proc.stdout.readline() if ready else ""
    if not line:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        _, err = proc.communicate(timeout=10)
        raise AssertionError(f"client printed nothing (status {proc.returncode}):\n{err[-4000:]}")
    return json.loads(line)


def _wait_no_agents(timeout_s: float = 20.0) -> set[int]:
    deadline = time.monotonic() + timeout_s
    left = pids_with_cmdline(AGENT_MARKER)
    while left and time.monotonic() < deadline:
        time.sleep(0.05)  # poll interval of a bounded wait for exits
        left = pids_with_cmdline(AGENT_MARKER)
    return left


def _monarch(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "monarch.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=120,
    )


def test_slurm_job_end_to_end_across_two_nodes(
    request: pytest.FixtureRequest, slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    spec = tmp_path / "myjob.py"
    spec.write_text(
        "import sys\nfrom monarch.job import SlurmJob\n"
        f"job = SlurmJob(meshes={{'trainers': 2}}, partition='box', time_limit='10', log_dir={str(tmp_path / 'slurm')!r},"
        " python_exe=sys.executable, job_start_timeout_s=60)\n"
    )
    cache = tmp_path / ".monarch" / "job_state.pkl"
    env = _env({"SLURM_CONF": str(slurm_cluster.conf)})
    started = time.monotonic()
    try:
        out = _result(_client(request, f"{spec}:job", cache, env=env))
        total = time.monotonic() - started
        hostnames = sorted({r["hostname"] for r in out["ranks"]})
        assert len(out["ranks"]) == 4 and hostnames == sorted(slurm_cluster.nodes)
        assert len(out["addresses"]["trainers"]) == 2
        print(
            f"SlurmJob 2 nodes: apply {out['apply_s']:.2f} s, + spawn 2x2 + first call() {out['first_call_s']:.2f} s, "
            f"client process end to end {total:.2f} s"
        )
        # the client is gone; the allocation is not: status (another process) sees it running
        status = _monarch("job", "status", "--cache", str(cache), env=env, cwd=tmp_path)
        assert status.returncode == 0, status.stderr
        assert "running" in status.stdout and "trainers: tcp://" in status.stdout
        # a second client reuses the cached allocation: same job, same agents
        again = _result(_client(request, f"{spec}:job", cache, env=env))
        assert again["job_id"] == out["job_id"] and again["addresses"] == out["addresses"]
        kill = _monarch("job", "kill", "--cache", str(cache), env=env, cwd=tmp_path)
        assert kill.returncode == 0, kill.stderr
        assert not cache.exists()
        slurm_cluster.wait_job(out["slurm_job_id"], timeout_s=60.0)
        queue = slurm_cluster.run(["squeue", "-h"], check=True)
        assert queue.stdout.strip() == ""
        assert _wait_no_agents() == set()
        gone = _monarch("job", "status", "--cache", str(cache), env=env, cwd=tmp_path)
        assert gone.returncode == 1 and "no job cached" in gone.stderr
    finally:
        slurm_cluster.run(["scancel", "--user=root"])


def test_slurm_job_without_sbatch_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from monarch.job import JobError, SlurmJob

    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(JobError, match="sbatch is not on PATH"):
        SlurmJob(meshes={"trainers": 1}, log_dir=str(tmp_path)).apply(None)


def test_ssh_job_starts_agents_over_ssh_and_they_end_with_the_client(
    request: pytest.FixtureRequest, sshd_server: SshServer, hosts: HostNet, tmp_path: Path
) -> None:
    ssh_args = sshd_server.ssh_argv()[1:-1]  # the fixture's options, without 'ssh' and the host
    spec = tmp_path / "sshjob.py"
    spec.write_text(
        "import sys\nfrom monarch.job import SSHJob\n"
        f"job = SSHJob([{f'root@{sshd_server.ip}'!r}], ssh_args={ssh_args!r}, python_exe=sys.executable,"
        f" workdir={str(ROOT)!r})\n"
    )
    env = _env()
    # the client kills the job itself
    out = _result(_client(request, f"{spec}:job", tmp_path / "a.pkl", "--kill", env=env))
    assert len(out["ranks"]) == 2 and {r["hostname"] for r in out["ranks"]} == {hosts[0].name}
    assert out["addresses"]["hosts"][0].startswith(f"tcp://{sshd_server.ip}:")
    print(
        f"SSHJob 1 host: apply {out['apply_s']:.2f} s, + spawn 2 + first call() {out['first_call_s']:.2f} s"
    )
    assert _wait_no_agents() == set()
    # a client SIGKILLed with its agents up: its ssh session closes, the remote agent stops
    held = _client(request, f"{spec}:job", tmp_path / "b.pkl", "--hold", env=env)
    _result(held)
    assert pids_with_cmdline(AGENT_MARKER)
    os.killpg(held.pid, signal.SIGKILL)
    held.wait(10)
    assert _wait_no_agents() == set()


def test_slurm_job_whose_agents_cannot_start_fails_with_its_output(
    slurm_cluster: SlurmCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from monarch.job import JobError, SlurmJob

    monkeypatch.setenv("SLURM_CONF", str(slurm_cluster.conf))
    job = SlurmJob(
        meshes={"trainers": 2},
        python_exe="/nonexistent/python",
        log_dir=str(tmp_path),
        job_start_timeout_s=60,
    )
    started = time.monotonic()
    with pytest.raises(
        JobError, match=r"(?s)ended \(.*\) before its agents registered.*/nonexistent/python"
    ):
        job.apply(None)
    print(f"SlurmJob with a bad interpreter: JobError after {time.monotonic() - started:.2f} s")
    assert not job.active
    assert slurm_cluster.run(["squeue", "-h"], check=True).stdout.strip() == ""
