"""``monarch-gen`` as a command: flags shown as flags, --version, what it wrote or that nothing was."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

CASES = Path(__file__).parent / "cases"


def _gen(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "monarch.generator.cli", *args],
        cwd=cwd, capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip


def test_help_shows_boolean_flags_without_a_value(tmp_path: Path) -> None:
    res = _gen("--help", cwd=tmp_path)
    assert res.returncode == 0
    assert "--check " in res.stdout and "--version" in res.stdout and "compat" in res.stdout
    assert "<bool>" not in res.stdout


def test_version_prints_the_distribution_version(tmp_path: Path) -> None:
    from importlib.metadata import version

    res = _gen("--version", cwd=tmp_path)
    assert (res.returncode, res.stdout.strip()) == (0, f"monarch-gen {version('monarch-idl')}")


def test_second_run_says_everything_is_up_to_date(tmp_path: Path) -> None:
    (tmp_path / "enums.capnp").write_bytes((CASES / "enums" / "enums.capnp").read_bytes())
    first = _gen("enums.capnp", "-o", "out", cwd=tmp_path)
    assert first.returncode == 0 and "wrote out/enums.py" in first.stdout
    again = _gen("enums.capnp", "-o", "out", cwd=tmp_path)
    assert (again.returncode, again.stdout) == (
        0,
        "out: up to date (1 schema(s)), nothing written\n",
    )
    check = _gen("enums.capnp", "-o", "out", "--check", cwd=tmp_path)
    assert (check.returncode, check.stdout) == (0, "out: up to date (1 schema(s))\n")
