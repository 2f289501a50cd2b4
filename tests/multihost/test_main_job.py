"""The main job (examples/train_digits.py, data-parallel MLP on digits) across two namespace hosts,
2 procs each, through ``--hosts``: it reaches the example's 95% target, its procs really ran in the
hosts, and the agents are back to their baseline afterwards (nothing left behind); with
``--tolerate-host-loss`` it survives losing one host mid-training and still reaches it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest

from tests.multihost.netns import HostNet
from tests.multihost.procs import kill_session
from tests.multihost.test_host_agents import (
    ROOT,
    _agent_log,
    _env,
    _readline,
    _start_agent,
    _wait_for,
)

pytestmark = [pytest.mark.multihost, pytest.mark.slow]

TIMEOUT_S = 240.0
#: after a host is lost the job re-plans or ends within this
LOSS_TIMEOUT_S = 90.0


@pytest.mark.parametrize("mode", ["client", "actors"])
def test_the_main_job_trains_across_two_hosts_of_two_procs(
    request, hosts: HostNet, mode: str
) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    # the job's code is on every machine (code is not shipped): examples/ on the agents' path
    agents = [_start_agent(host, pythonpath=[str(ROOT / "examples")]) for host in hosts]
    baseline = [host.pids() for host in hosts]  # each agent and its fork server
    workers = ",".join(f"tcp://{addr[4:]}" for _, addr in agents)
    argv = [
        sys.executable,
        str(ROOT / "examples" / "train_digits.py"),
        "--mode",
        mode,
        "--hosts",
        workers,
    ]
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=_env(),
        cwd=ROOT,
        start_new_session=True,
    )

    request.addfinalizer(lambda: kill_session(proc))
    try:
        out, _ = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        kill_session(proc)
        pytest.fail(
            f"the main job ran past {TIMEOUT_S} s: {(proc.stdout.read() if proc.stdout else '')[-3000:]}"
        )
    assert proc.returncode == 0, out[-4000:]
    match = re.search(r"held-out accuracy: ([0-9.]+)%", out)
    assert match and float(match.group(1)) >= 95.0, out[-3000:]
    # the procs ran on both hosts (each agent started 2), and are gone
    for proc_, _addr in agents:
        assert "started 2 procs for client" in _agent_log(proc_), _agent_log(proc_)
    for host, before in zip(hosts, baseline):
        assert _wait_for(lambda h=host, b=before: h.pids() == b, 10.0), (
            host.name,
            host.pids(),
            before,
        )
    print(
        f"\nmain job ({mode}) across 2 hosts x 2 procs: {match.group(0)}; {out.strip().splitlines()[-1]}"
    )


def test_the_main_job_fails_at_once_naming_the_missing_module_when_a_host_lacks_its_code(
    request, hosts: HostNet
) -> None:
    """Code is not shipped: agents without examples/ on their path cannot decode the actors'
    spawn (``digits_step`` is not importable there), and the job's first call says so at once
    instead of waiting for a spawn that will never come."""
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    agents = [_start_agent(host) for host in hosts]
    workers = ",".join(f"tcp://{addr[4:]}" for _, addr in agents)
    argv = [
        sys.executable,
        str(ROOT / "examples" / "train_digits.py"),
        "--steps",
        "5",
        "--hosts",
        workers,
    ]
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=_env(),
        cwd=ROOT,
        start_new_session=True,
    )
    request.addfinalizer(lambda: kill_session(proc))
    out, _ = proc.communicate(timeout=TIMEOUT_S)
    assert proc.returncode != 0, out[-3000:]
    assert "could not be decoded here" in out and "digits_step" in out, out[-3000:]
    assert "never arrived" not in out, out[-3000:]


def _kill_a_host_at_step_60(
    request, hosts: HostNet, mode: str, lost: int, *extra: str
) -> tuple[int, str, list[set[int]], float, float]:
    """Run the main job across ``hosts`` (2 procs each) with ``extra`` options, SIGKILL every
    process of host ``lost`` (its agent, fork server and the job's procs) once step 60 of 300 is
    printed, and wait for the job's end. Returns its exit status, its output, each host's
    baseline processes, how long the kill took and the time from the kill to the job's end."""
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    agents = [_start_agent(host, pythonpath=[str(ROOT / "examples")]) for host in hosts]
    baseline = [host.pids() for host in hosts]
    workers = ",".join(f"tcp://{addr[4:]}" for _, addr in agents)
    argv = [
        sys.executable,
        str(ROOT / "examples" / "train_digits.py"),
        "--mode",
        mode,
        "--hosts",
        workers,
        "--print-every",
        "20",
        *extra,
    ]
    env = _env()
    env["PYTHONFAULTHANDLER"] = "1"
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=ROOT,
        start_new_session=True,
    )
    request.addfinalizer(lambda: kill_session(proc))
    lines: list[str] = []
    deadline = time.monotonic() + TIMEOUT_S
    while not any(line.startswith("step 60/") for line in lines):
        if time.monotonic() > deadline:
            pytest.fail(f"no step 60 within {TIMEOUT_S} s: {''.join(lines)[-3000:]}")
        lines.append(_readline(proc, deadline - time.monotonic()))
    killed_at = time.monotonic()
    hosts[lost].kill_all()
    kill_s = time.monotonic() - killed_at
    try:
        rest, _ = proc.communicate(timeout=LOSS_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGABRT)  # PYTHONFAULTHANDLER: every thread's traceback first
        try:
            rest, _ = proc.communicate(timeout=10.0)
        except subprocess.TimeoutExpired:
            rest = ""
        kill_session(proc)
        pytest.fail(
            f"the job ran past {LOSS_TIMEOUT_S} s after the loss: {(''.join(lines) + rest)[-8000:]}"
        )
    return proc.returncode, "".join(lines) + rest, baseline, kill_s, time.monotonic() - killed_at


@pytest.mark.parametrize(
    ("mode", "lost"),
    [("client", 0), ("actors", 0), ("actors", 1)],
    ids=["client-lose-h0", "actors-lose-h0-with-reducer", "actors-lose-h1"],
)
def test_the_main_job_survives_losing_a_host_mid_training_with_tolerate_host_loss(
    request, hosts: HostNet, mode: str, lost: int
) -> None:
    """``--tolerate-host-loss``: every process of one host SIGKILLed after step 60 of 300; the
    job re-plans onto the other host's 2 procs, finishes, reaches the 95% target on the whole
    held-out set and exits 0; the surviving agent is back to its baseline. In actors mode losing
    host 0 loses the reducer too (its callers fail at once); losing host 1 leaves the reducer
    waiting for 2 missing contributions until its step timeout (``--step-timeout 3``)."""
    status, out, baseline, kill_s, finished_s = _kill_a_host_at_step_60(
        request, hosts, mode, lost, "--tolerate-host-loss", "--step-timeout", "3"
    )
    assert status == 0, out[-4000:]
    replanned = re.search(
        r"lost 2 of 4 replicas \(host (\S+): .*\); training on 1 host\(s\), 2 procs, from step (\d+)",
        out,
    )
    assert replanned and replanned.group(1) == f"h{lost}", out[-4000:]
    assert 60 <= int(replanned.group(2)) < 300, out[-4000:]
    assert "step 300/300" in out, out[-3000:]
    match = re.search(r"held-out accuracy: ([0-9.]+)% \((\d+)/(\d+)\)", out)
    assert match and float(match.group(1)) >= 95.0, out[-3000:]
    assert match.group(3) == "450", out[-3000:]  # the whole held-out set, re-sharded over 2
    survivor = hosts[1 - lost]
    assert _wait_for(lambda: survivor.pids() == baseline[1 - lost], 10.0), (
        survivor.name,
        survivor.pids(),
        baseline[1 - lost],
    )
    assert not hosts[lost].pids()
    print(
        f"\n{mode}, h{lost} SIGKILLed at step 60 (kill took {kill_s * 1e3:.0f} ms): re-planned from "
        f"step {replanned.group(2)}, {match.group(0)}; {finished_s:.1f} s from the kill to the exit"
    )


@pytest.mark.parametrize("mode", ["client", "actors"])
def test_the_main_job_without_tolerate_host_loss_ends_at_once_naming_the_lost_host(
    request, hosts: HostNet, mode: str
) -> None:
    """The default, as Monarch's: host 1 SIGKILLed mid-training ends the job with exit status 1
    and the ``SupervisionError`` naming the host, promptly (in actors mode the survivors still
    wait in the reducer: the job does not wait for them), leaving host 0's agent at baseline."""
    status, out, baseline, _kill_s, finished_s = _kill_a_host_at_step_60(request, hosts, mode, 1)
    assert status == 1, out[-4000:]
    assert "SupervisionError" in out and "host h1" in out, out[-4000:]
    assert "lost 2 of 4 replicas" not in out, out[-4000:]
    assert finished_s < 30.0, (finished_s, out[-3000:])
    assert _wait_for(lambda: hosts[0].pids() == baseline[0], 10.0), (hosts[0].pids(), baseline[0])
    print(f"\n{mode} without --tolerate-host-loss: exit 1 {finished_s:.1f} s after the kill")
