"""ProcessJob / LocalJob on real local agent processes; the job cache; clean-up, even when the client dies."""

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
from monarch.actor import Actor, endpoint
from monarch.job import JobState, LocalJob, ProcessJob, job_load

ROOT = Path(__file__).resolve().parents[2]


class Pid(Actor):
    @endpoint
    def pid(self) -> int:
        return os.getpid()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def _descendants(pids: list[int]) -> set[int]:
    parent: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parent[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError):
                pass
    out = set(pids)
    grew = True
    while grew:
        more = {p for p, pp in parent.items() if pp in out} - out
        out |= more
        grew = bool(more)
    return out


def _wait_gone(pids: set[int], timeout_s: float = 15.0) -> set[int]:
    deadline = time.monotonic() + timeout_s
    left = {p for p in pids if _alive(p)}
    while left and time.monotonic() < deadline:
        time.sleep(0.05)  # poll interval of a bounded wait for exits
        left = {p for p in left if _alive(p)}
    return left


_CHILD_ENV = "MONARCH_TEST_JOB_CHILD"


@pytest.fixture
def job(request: pytest.FixtureRequest) -> ProcessJob:
    from monarch._mesh import current

    if current.installed() is not None and not os.environ.get(_CHILD_ENV):
        # an earlier test of this pytest process started its client runtime on a Unix socket,
        # which agents cannot reach (attach_to_workers then refuses, as it should): run this test
        # in a fresh pytest process, as a user's client is a fresh process, and report its result
        out = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", request.node.nodeid],
            cwd=ROOT, env={**os.environ, _CHILD_ENV: "1"}, capture_output=True, text=True, timeout=240,
        )  # fmt: skip
        assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
        pytest.skip("passed in a fresh pytest process (this one's client runtime already listens on Unix)")
    j = ProcessJob({"hosts": 2})
    request.addfinalizer(lambda: j.kill(None))
    return j


def test_process_job_state_gives_a_mesh_per_name_and_calls_reach_every_rank(
    job: ProcessJob,
) -> None:
    started = time.monotonic()
    state = job.state(cached_path=None)
    applied = time.monotonic() - started
    assert isinstance(state, JobState) and len(state.hosts) == 2
    procs = state.hosts.spawn_procs(per_host={"gpus": 2})
    pids = procs.spawn("pid", Pid).pid.call().get(60.0)
    first = time.monotonic() - started
    values = [p for _, p in pids.items()]
    assert len(set(values)) == 4 and os.getpid() not in values
    # every proc is a descendant of one of the job's agents, not of this client
    tree = _descendants(job._pids)
    assert set(values) <= tree
    print(f"ProcessJob(2 hosts): apply {applied:.2f} s, spawn 2x2 + first call() {first:.2f} s")
    with pytest.raises(AttributeError, match="not a mesh of this job; its meshes: hosts"):
        _ = state.trainers


def test_kill_stops_agents_and_their_procs(job: ProcessJob) -> None:
    state = job.state(cached_path=None)
    procs = state.hosts.spawn_procs(per_host={"gpus": 1})
    procs.spawn("pid", Pid).pid.call().get(60.0)
    tree = _descendants(job._pids)
    assert len(tree) >= 4  # 2 agents, their fork servers and procs
    job.kill(None)
    assert _wait_gone(tree) == set()
    assert not job.alive() and not job.active


def test_state_reuses_the_cache_and_relaunches_when_its_agents_are_gone(
    job: ProcessJob, tmp_path: Path
) -> None:
    cache = str(tmp_path / "job_state.pkl")
    job.apply(cache)
    first_id, first_addrs = job.job_id, dict(job._addresses)
    assert job_load(cache).job_id == first_id
    again = ProcessJob({"hosts": 2})
    again.apply(cache)  # same spec, agents up: adopted, nothing launched
    assert again.job_id == first_id and again._addresses == first_addrs
    other = ProcessJob({"hosts": 1})
    assert other._spec() != job._spec()
    for pid in job._pids:  # the agents die behind the cache's back
        os.killpg(pid, signal.SIGKILL)
    assert _wait_gone(set(job._pids)) == set()
    fresh = ProcessJob({"hosts": 2})
    try:
        fresh.state(cache)  # stale cache: detected and relaunched
        assert fresh.job_id != first_id and fresh.alive()
        assert job_load(cache).job_id == fresh.job_id
        assert fresh._addresses != first_addrs
    finally:
        fresh.kill(cache)
    assert not os.path.exists(cache)


def test_agents_and_procs_die_with_a_sigkilled_client(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MONARCH_")}
    env["PYTHONPATH"] = str(ROOT)
    client = subprocess.Popen(
        [sys.executable, "-m", "tests.job._client", str(tmp_path / "cache.pkl")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, cwd=ROOT, start_new_session=True,
    )  # fmt: skip
    tree: set[int] = set()
    try:
        assert client.stdout is not None
        ready, _, _ = select.select([client.stdout], [], [], 90.0)
        assert ready, "the client printed nothing within 90 s"
        info = json.loads(client.stdout.readline())
        tree = _descendants(info["agents"]) | set(info["procs"])
        assert set(info["procs"]) <= tree and len(tree) >= 8
        os.killpg(client.pid, signal.SIGKILL)
        client.wait(10)
        left = _wait_gone(tree)
        assert left == set(), f"left running after the client died: {sorted(left)}"
        # the cache it wrote is now stale: status says so
        cached = job_load(str(tmp_path / "cache.pkl"))
        assert cached.job_id == info["job_id"] and not cached.alive()
    finally:
        for pid in tree | {client.pid}:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        client.wait(10)


def test_local_job_meshes_are_this_host() -> None:
    state = LocalJob(hosts=("trainers", "dataloaders")).state()
    assert len(state.trainers) == 1 and len(state.dataloaders) == 1
    with pytest.raises(AttributeError, match="its meshes: dataloaders, trainers"):
        _ = state.hosts


@pytest.mark.parametrize(
    ("meshes", "error", "match"),
    [
        ({}, ValueError, "meshes is empty"),
        ({"hosts": 0}, ValueError, "must be positive, got 0"),
        ({"hosts": -2}, ValueError, "must be positive, got -2"),
        ({"hosts": 1.5}, TypeError, "must be an int"),
        ({"_private": 1}, ValueError, "must be an identifier"),
        ({"two words": 1}, ValueError, "must be an identifier"),
        ([("hosts", 2)], TypeError, "must be a dict"),
    ],
)
def test_bad_mesh_specs_are_refused(meshes: object, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        ProcessJob(meshes)  # type: ignore[arg-type]
