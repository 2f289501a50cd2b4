"""The main job (examples/train_digits.py, data-parallel MLP on digits) across two namespace hosts,
2 procs each, through ``--hosts``: it reaches the example's 95% target, its procs really ran in the
hosts, and the agents are back to their baseline afterwards (nothing left behind)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.multihost.netns import HostNet
from tests.multihost.procs import kill_session
from tests.multihost.test_host_agents import ROOT, _agent_log, _env, _start_agent, _wait_for

pytestmark = [pytest.mark.multihost, pytest.mark.slow]

TIMEOUT_S = 240.0


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
