"""Every script in examples/ runs to its success line, and leaves no process behind.

Each example runs as a subprocess in its own session (process group), so every process it
starts (procs, a fork server) shares its group id; after it exits, the group must empty within
a few seconds. Whatever is left is killed and the test fails.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.runtime.pidwait import wait_exited

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
GENERATED_EXAMPLES = [
    "train_digits.py",
    "ping_pong.py",
    "parameter_server.py",
    "pipeline.py",
    "parameter_server_rdma_idl.py",
]


def _group_members(pgid: int) -> list[int]:
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read().decode(errors="replace")
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry))
    return members


def run_example(script: str, *args: str, timeout_s: float = 120.0) -> str:
    """Run ``examples/<script>``; return its output (stdout and stderr) if it exits with 0.

    Fails the test on a non-zero exit, a timeout, or any process of its group still alive
    5 s after it ended (those are killed).
    """
    proc = subprocess.Popen(
        [sys.executable, str(EXAMPLES / script), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
        start_new_session=True,
        env={**os.environ, "COLUMNS": "120"},
    )
    timed_out = False
    try:
        out, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        timed_out = True
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
    finally:
        deadline = time.monotonic() + 5.0
        left = _group_members(proc.pid)
        while left and time.monotonic() < deadline:
            # wake when they exit; then look again (one may have started another)
            wait_exited(left, deadline - time.monotonic())
            left = _group_members(proc.pid)
        if left:
            os.killpg(proc.pid, signal.SIGKILL)
    assert not timed_out, f"{script} ran past {timeout_s} s:\n{out}"
    assert not left, f"{script} left processes behind: {left}\n{out}"
    assert proc.returncode == 0, f"{script} exited with {proc.returncode}:\n{out}"
    return out


@pytest.mark.slow
@pytest.mark.timeout(200)
def test_train_digits_with_generated_stubs_reaches_95_percent() -> None:
    out = run_example("train_digits.py", timeout_s=180)
    line = next(x for x in out.splitlines() if x.startswith("held-out accuracy:"))
    assert float(line.split()[2].rstrip("%")) >= 95.0, out


@pytest.mark.slow
@pytest.mark.timeout(200)
def test_train_digits_averaging_among_actors_reaches_95_percent() -> None:
    out = run_example("train_digits.py", "--mode", "actors", timeout_s=180)
    line = next(x for x in out.splitlines() if x.startswith("held-out accuracy:"))
    assert float(line.split()[2].rstrip("%")) >= 95.0, out


@pytest.mark.slow
@pytest.mark.timeout(200)
def test_train_digits_ddp_inside_the_mesh_reaches_95_percent() -> None:
    out = run_example("train_digits.py", "--mode", "ddp", timeout_s=180)
    line = next(x for x in out.splitlines() if x.startswith("held-out accuracy:"))
    assert float(line.split()[2].rstrip("%;")) >= 95.0, out


@pytest.mark.slow
@pytest.mark.timeout(200)
def test_train_digits_plain_api_reaches_95_percent() -> None:
    out = run_example("train_digits_plain.py", timeout_s=180)
    assert "held-out accuracy:" in out, out


def test_getting_started_runs_every_step() -> None:
    out = run_example("getting_started.py")
    assert (
        "values after broadcast + sliced broadcast: ValueMesh({'gpus': 4}, values=[2, 2, 1, 1])"
        in out
    )
    assert "(sliced) trainer at {'gpus': 1} takes a step" in out
    assert "it did not say hello: Actor call errorful.say_hello failed: RuntimeError: I don't want to" in out
    assert "getting started: ok" in out


def test_ping_pong_between_two_meshes() -> None:
    out = run_example("ping_pong.py", "--rounds", "5")
    assert "ping-pong: 2 pairs x 5 rounds ok" in out


def test_dataloader_trainer_rank_matched() -> None:
    out = run_example("dataloader_trainer.py")
    assert "trainer {'gpus': 3} (message rank {'gpus': 3}) got batch 302" in out
    assert "dataloader-trainer: 4 trainers each read only their own loader: ok" in out


def test_parameter_server_converges() -> None:
    out = run_example("parameter_server.py")
    assert "parameter server: version 240" in out and out.rstrip().endswith("ok"), out


@pytest.mark.timeout(200)
def test_parameter_server_rdma_with_generated_stubs_learns_digits() -> None:
    out = run_example("parameter_server_rdma_idl.py", timeout_s=180)
    assert "weights: 2410 float32 in 9640 bytes registered by server" in out, out
    line = next(x for x in out.splitlines() if x.startswith("parameter server (rdma, idl):"))
    assert line.endswith(" ok"), out


def test_pipeline_keeps_order_through_three_stages() -> None:
    out = run_example("pipeline.py", "--items", "30")
    assert "pipeline: 30/30 items through 3 stages, in order=True ok" in out


def test_hierarchical_aggregation_over_hosts_and_gpus() -> None:
    out = run_example("hierarchical_aggregation.py")
    assert "mesh extent: {'hosts': 2, 'gpus': 2}" in out
    assert "hierarchical aggregation: total 26 (flat gather 26) ok" in out


def test_explicit_response_port_answered_from_threads() -> None:
    out = run_example("explicit_response_port.py")
    assert "sent from thread squarer-3" in out
    assert "explicit response port: completion order [1, 2, 3]" in out and out.rstrip().endswith(
        "ok"
    ), out


def test_channels_producer_consumer() -> None:
    out = run_example("channels.py")
    assert "channels: 60 values from 3 producers in order ok" in out


@pytest.mark.timeout(150)
def test_supervisor_recovers_from_failing_child_meshes_and_supervises_each_failure() -> None:
    out = run_example("supervisor.py", timeout_s=140)
    lines = out.splitlines()
    assert "handled_error: caught ActorError: Actor call divider.divide failed: ZeroDivisionError" in out
    assert "crash_and_respawn: caught SupervisionError" in out
    assert "crash_and_respawn: respawned child mesh answered [0, 10]" in out
    # each scenario that breaks a child waits for that child's own failure in __supervise__
    assert any(
        x.startswith("crash_and_respawn: __supervise__ got: crashing_workers ranks [1]: ")
        and "exited with status 3" in x
        for x in lines
    ), out
    assert (
        "fire_and_forget_failure: __supervise__ got: exploder ranks [0]: "
        "RuntimeError: child exploded with nobody waiting for an answer" in lines
    ), out
    assert "FAILED" not in out and "supervisor: ok" in lines, out


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_examples_with_generated_stubs_pass_mypy_strict(tmp_path: Path) -> None:
    if shutil.which("mypy") is None:
        pytest.skip("mypy is not installed")
    # The default editable install hides the package from mypy: show it through a link tree
    # laid out as pyproject's package-dir maps it.
    pkg = tmp_path / "shadow" / "monarch"
    pkg.mkdir(parents=True)
    for entry in (ROOT / "runtime").iterdir():
        if entry.name != "__pycache__":
            (pkg / entry.name).symlink_to(entry)
    for name in ("generator", "generated", "idl", "rdma"):
        (pkg / name).symlink_to(ROOT / name)
    res = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"), "--cache-dir", str(tmp_path / "cache"),
         "--strict", *[str(EXAMPLES / s) for s in GENERATED_EXAMPLES]],
        env={**os.environ, "MYPYPATH": str(tmp_path / "shadow")},
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
