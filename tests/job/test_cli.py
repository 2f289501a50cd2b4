"""``monarch job apply|status|kill`` on a ProcessJob spec file, and bad input."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MONARCH_")}
    env["PYTHONPATH"] = str(ROOT)
    return env


def _monarch(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "monarch.cli", *args],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=cwd,
        timeout=120,
    )


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def test_apply_holds_a_process_job_status_sees_it_and_sigterm_stops_it(tmp_path: Path) -> None:
    (tmp_path / "jobs.py").write_text(
        "from monarch.job import ProcessJob\n\ndef make():\n    return ProcessJob({'hosts': 2})\n"
    )
    apply = subprocess.Popen(
        [sys.executable, "-m", "monarch.cli", "job", "apply", "jobs.py:make"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), cwd=tmp_path, start_new_session=True,
    )  # fmt: skip
    try:
        assert apply.stdout is not None
        assert select.select([apply.stdout], [], [], 60.0)[0], "apply printed nothing within 60 s"
        lines = [apply.stdout.readline(), apply.stdout.readline()]  # printed and flushed together
        assert lines[0].startswith("<ProcessJob") and lines[1].startswith(
            "hosts: tcp://127.0.0.1:"
        ), lines
        status = _monarch("job", "status", cwd=tmp_path)
        assert status.returncode == 0 and "\nrunning\n" in status.stdout, status
        from monarch.job import job_load

        pids = job_load(str(tmp_path / ".monarch" / "job_state.pkl"))._pids
        assert len(pids) == 2 and all(_alive(p) for p in pids)
        apply.send_signal(signal.SIGTERM)
        assert apply.wait(30) == 0
        assert not any(_alive(p) for p in pids)
        assert not (tmp_path / ".monarch" / "job_state.pkl").exists()
    finally:
        if apply.poll() is None:
            os.killpg(apply.pid, signal.SIGKILL)
            apply.wait(10)


def test_bad_specs_and_missing_cache_give_clear_errors(tmp_path: Path) -> None:
    (tmp_path / "notajob.py").write_text("job = 42\n")
    r = _monarch("job", "apply", "notajob.py", cwd=tmp_path)
    assert r.returncode == 2 and "is a int, not a job" in r.stderr
    r = _monarch("job", "apply", "missing.py:job", cwd=tmp_path)
    assert r.returncode == 2 and "no such file: missing.py" in r.stderr
    r = _monarch("job", "apply", "no_such_module_xyz:job", cwd=tmp_path)
    assert r.returncode == 2 and "cannot import 'no_such_module_xyz'" in r.stderr
    (tmp_path / "badjob.py").write_text(
        "from monarch.job import ProcessJob\njob = lambda: ProcessJob({'hosts': 0})\n"
    )
    r = _monarch("job", "apply", "badjob.py", cwd=tmp_path)
    assert r.returncode == 2 and "must be positive, got 0" in r.stderr
    r = _monarch("job", "status", cwd=tmp_path)
    assert r.returncode == 1 and "no job cached at .monarch/job_state.pkl" in r.stderr
    r = _monarch("job", "kill", cwd=tmp_path)
    assert r.returncode == 1 and "no job cached" in r.stderr
