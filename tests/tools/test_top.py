"""``monarch top`` on real procs: textual's Pilot drives the app against this test process's own
client (a 4-proc mesh), a client in another process, and the real ``monarch top`` in a pty."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator

import pytest
from monarch.tools.admin_client import AdminClient, AdminInfo, find_admin
from monarch.tools.top import MeshTop

from tests.runtime.failure_log import FailureLog
from tests.tools.conftest import RunningMesh


async def _until(pilot, what: str, cond: Callable[[], object], timeout_s: float = 30.0) -> None:
    """Let the app run until ``cond()`` holds; fail after ``timeout_s`` seconds."""
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await pilot.pause(0.05)


def _actor_labels(app: MeshTop, mesh: str) -> dict[str, str]:
    return {k: v for k, v in app.labels().items() if k.startswith("a:") and f" {mesh}[" in " " + v}


def _pid_of(label: str) -> int | None:
    words = label.split()
    return int(words[words.index("pid") + 1]) if "pid" in words else None


def _client(running_mesh: RunningMesh) -> AdminClient:
    return AdminClient(AdminInfo.load(running_mesh.admin_file), timeout_s=10.0)


def test_tree_shows_every_live_actor_with_status_counts_and_rate(running_mesh: RunningMesh) -> None:
    app = MeshTop(_client(running_mesh), interval_s=0.3)

    async def go() -> None:
        async with app.run_test(size=(200, 60)) as pilot:
            await _until(
                pilot, "4 workers in the tree", lambda: len(_actor_labels(app, "workers")) == 4
            )
            labels = _actor_labels(app, "workers")
            for rank in range(4):
                found = [v for v in labels.values() if v.startswith(f"workers[{rank}] ")]
                assert len(found) == 1 and "Worker running" in found[0], labels
                label = found[0]
                assert "handled=" in label and "last=ping" in label and "q=" in label
            assert len(_actor_labels(app, "more0")) == 4
            procs = [
                v
                for k, v in app.labels().items()
                if k.startswith("p:") and _pid_of(v) in running_mesh.pids
            ]
            assert len(procs) == 4 and all(" running" in v for v in procs), procs
            # messages handled and their rate follow the mesh: 20 more pings to rank 1
            before = app.polls
            for _ in range(20):
                running_mesh.workers.slice(gpus=1).ping.call_one().get(10.0)
            await _until(pilot, "two polls after the pings", lambda: app.polls >= before + 2)
            ranks = {v.split()[0]: v for v in _actor_labels(app, "workers").values()}
            assert "/s" in ranks["workers[1]"] and " -/s" not in ranks["workers[1]"]
            handled = {r: int(v.split("handled=")[1].split()[0]) for r, v in ranks.items()}
            assert handled["workers[1]"] >= handled["workers[0]"] + 20
            banner = str(app.query_one("#banner").render())
            assert (
                " procs" in banner and "client pid" in banner
            )  # earlier tests may add failed procs

    asyncio.run(go())


def test_selecting_an_actor_shows_its_details_and_a_py_spy_stack_of_its_proc(
    running_mesh: RunningMesh,
) -> None:
    app = MeshTop(_client(running_mesh), interval_s=0.5)
    pids = running_mesh.workers.ping.call().get(10.0)  # warm; and a last endpoint to show

    async def go() -> None:
        async with app.run_test(size=(200, 60)) as pilot:
            await _until(pilot, "the workers", lambda: len(_actor_labels(app, "workers")) == 4)
            assert app.status is not None
            (actor,) = [
                a
                for h in app.status["hosts"]
                for p in h["procs"]
                for a in p["actors"]
                if a["mesh"] == "workers" and a["rank"] == 2
            ]
            app.select("actor", actor["id"])
            await pilot.press("p")
            details = str(app.query_one("#details").render())
            assert actor["id"] in details and "Worker" in details and "last endpoint" in details
            await _until(pilot, "the stack", lambda: app.stack_text is not None, timeout_s=60.0)
            text = app.stack_text or ""
            if text.startswith("no stack"):  # ptrace not allowed here: the pane says why
                assert "py-spy" in text or "ptrace" in text or "permission" in text.lower(), text
            else:
                assert "py-spy dump of" in text and "Thread" in text, text
            assert text in str(app.query_one("#stack").render())

    asyncio.run(go())
    assert len(pids.values()) == 4


def test_a_sigkilled_proc_shows_as_failed_within_a_few_refreshes(
    running_mesh: RunningMesh, failures: FailureLog
) -> None:
    app = MeshTop(_client(running_mesh), interval_s=0.3)

    async def go() -> None:
        async with app.run_test(size=(200, 60)) as pilot:
            await _until(
                pilot,
                "4 running procs",
                lambda: (
                    sum(" running" in v for k, v in app.labels().items() if k.startswith("p:")) == 4
                ),
            )
            assert app.status is not None
            (victim,) = [p for h in app.status["hosts"] for p in h["procs"] if p["rank"] == 2]
            key = "p:" + victim["id"]
            os.kill(victim["pid"], signal.SIGKILL)
            polls = app.polls
            await _until(
                pilot, "the proc shown failed", lambda: " failed" in app.labels().get(key, "")
            )
            assert app.polls - polls <= 10, "more than a few refreshes"
            assert "signal 9" in app.labels()[key] or "SIGKILL" in app.labels()[key]
            # its actors as failed; the other procs still running
            others = [
                v
                for k, v in app.labels().items()
                if k.startswith("p:") and k != key and _pid_of(v) in running_mesh.pids
            ]
            assert len(others) == 3 and all(" running" in v for v in others), others
            app.select("proc", victim["id"])
            await pilot.press("p")
            await _until(pilot, "the stack pane", lambda: app.stack_text is not None)
            assert (app.stack_text or "").startswith("no stack") and "not running" in (
                app.stack_text or ""
            )
            assert "failed" in str(app.query_one("#details").render())

    asyncio.run(go())
    failures.wait_for("workers")


def test_r_refreshes_now_and_q_quits(running_mesh: RunningMesh) -> None:
    app = MeshTop(_client(running_mesh), interval_s=3600.0)

    async def go() -> None:
        async with app.run_test() as pilot:
            await _until(pilot, "the first poll", lambda: app.polls == 1)
            await pilot.press("r")
            await _until(pilot, "the poll r asked for", lambda: app.polls == 2)
            await pilot.press("q")
            await _until(pilot, "the app to quit", lambda: not app.is_running)

    asyncio.run(go())


_CLIENT = textwrap.dedent(
    """
    import sys
    from monarch.actor import Actor, endpoint, this_host

    class Stepper(Actor):
        @endpoint
        def step(self) -> int:
            return 1

    procs = this_host().spawn_procs(per_host={"gpus": 2})
    s = procs.spawn("stepper", Stepper)
    s.step.call().get(60.0)
    print("READY", flush=True)
    sys.stdin.readline()  # until the test closes our stdin
    procs.stop().get(30.0)
    """
)


@pytest.fixture
def other_client() -> Iterator[subprocess.Popen[str]]:
    """A client with a 2-proc mesh in another process (the user's training script); stopped
    afterwards."""
    env = {k: v for k, v in os.environ.items() if k != "MONARCH_ADMIN_FILE"}
    p = subprocess.Popen(
        [sys.executable, "-c", _CLIENT],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert p.stdout is not None
        line = p.stdout.readline()
        assert line.strip() == "READY", f"the client did not start: {line!r}"
        yield p
    finally:
        if p.poll() is None:
            p.stdin.close()  # type: ignore[union-attr]
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)


def test_a_client_in_another_process_that_goes_away_is_shown_not_a_crash(
    other_client: subprocess.Popen[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MONARCH_ADMIN_FILE", raising=False)
    app = MeshTop(AdminClient(find_admin(other_client.pid), timeout_s=5.0), interval_s=0.3)

    async def go() -> None:
        async with app.run_test(size=(200, 50)) as pilot:
            await _until(
                pilot, "the other client's actors", lambda: len(_actor_labels(app, "stepper")) == 2
            )
            assert app.status is not None and app.status["client"]["pid"] == other_client.pid
            other_client.stdin.close()  # type: ignore[union-attr]
            other_client.wait(30)
            await _until(pilot, "the client shown gone", lambda: app.error is not None)
            banner = str(app.query_one("#banner").render())
            assert "client unreachable" in banner and "stale" in banner and "retrying" in banner
            assert app.is_running and len(_actor_labels(app, "stepper")) == 2  # last snapshot kept

    asyncio.run(go())


def test_monarch_top_runs_in_a_terminal_against_the_client_and_q_quits(
    running_mesh: RunningMesh,
) -> None:
    pexpect = pytest.importorskip("pexpect")
    child = pexpect.spawn(
        sys.executable,
        ["-c", "from monarch.cli import main; main()", "top", "--interval-s", "0.5"],
        env={**running_mesh.env(), "TERM": "xterm-256color", "COLUMNS": "200", "LINES": "50"},
        dimensions=(50, 200),
        timeout=60,
        encoding="utf-8",
    )
    try:
        child.expect("Worker", timeout=60)
        child.expect("running", timeout=30)
        child.send("q")
        child.expect(pexpect.EOF, timeout=30)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0, (child.exitstatus, child.signalstatus)


def test_monarch_top_without_a_client_says_so(tmp_path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MONARCH_")}
    env["MONARCH_ADMIN_FILE"] = str(tmp_path / "missing.json")
    out = subprocess.run(
        [sys.executable, "-c", "from monarch.cli import main; main()", "top"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1 and "cannot read the admin file" in out.stderr, out
