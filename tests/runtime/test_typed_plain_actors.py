"""Plain Python actors' typing: the typed program of typed_plain_actors.py passes mypy --strict
and does at run time what its types say (the misuses are in tests/generator/typed_misuse.py)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from monarch.testing import proc_mesh

from tests.runtime.typed_plain_actors import drive

ROOT = Path(__file__).resolve().parents[2]


def test_typed_plain_actor_program_runs_as_its_types_say_on_real_procs() -> None:
    with proc_mesh({"gpus": 2}) as procs:
        one_plus_size, values, text, echoes = drive(procs)
    assert one_plus_size == 1 + 2 + 1
    assert values == [10, 15]
    assert text == "n=10"
    assert echoes == ["hi", "hi"]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_typed_plain_actor_program_passes_mypy_strict_without_cast() -> None:
    src = (ROOT / "tests" / "runtime" / "typed_plain_actors.py").read_text()
    assert not re.search(r"\bcast\(|type: ignore", src)
    res = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"), "--strict",
         "--cache-dir", str(ROOT / ".mypy_cache"), "--no-error-summary",
         str(ROOT / "tests" / "runtime" / "typed_plain_actors.py")],
        capture_output=True, text=True, check=False, cwd=ROOT,
    )  # fmt: skip
    if "No module named mypy" in res.stderr:
        pytest.skip("mypy is not installed")
    assert res.returncode == 0, res.stdout + res.stderr
