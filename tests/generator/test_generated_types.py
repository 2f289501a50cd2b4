"""One mypy --strict run over all generated code, a typed user program and a file of misuses.

The generated modules, ``typed_user.py`` and the plain-actor program
``tests/runtime/typed_plain_actors.py`` must type-check cleanly; ``typed_misuse.py`` must
produce exactly the errors written on its lines (``# E: message  [code]``) and no others.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from gen_cases import CASE_NAMES
from shadow import ROOT, make_shadow

HERE = Path(__file__).parent
_EXPECT = re.compile(r"#\s*E:\s*(.+?)\s*$")
_REPORTED = re.compile(r"^(?P<file>[^:]+):(?P<line>\d+): error: (?P<msg>.+)$")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_generated_code_and_programs_typecheck_with_exact_misuse_errors(
    case_package: Path, tmp_path: Path
) -> None:
    if (
        shutil.which("mypy") is None
        and subprocess.run([sys.executable, "-m", "mypy", "--version"], check=False).returncode
    ):
        pytest.skip("mypy is not installed")
    shadow = make_shadow(tmp_path / "shadow")
    files = [str(shadow / "monarch" / "generated" / "example.py")]
    files += [str(case_package / f"{name}.py") for name in CASE_NAMES]
    files += [
        str(HERE / "typed_user.py"),
        str(HERE / "typed_misuse.py"),
        str(HERE / "case_actors.py"),
        str(HERE.parent / "runtime" / "typed_plain_actors.py"),
    ]
    res = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"),
         "--cache-dir", str(ROOT / ".mypy_cache"), "--no-error-summary", "--show-error-codes", *files],
        env={"MYPYPATH": str(shadow), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
    )  # fmt: skip
    reported: set[tuple[str, int, str]] = set()
    for line in res.stdout.splitlines():
        m = _REPORTED.match(line)
        if m:
            reported.add((Path(m["file"]).name, int(m["line"]), m["msg"]))
    expected: set[tuple[str, int, str]] = set()
    for n, text in enumerate((HERE / "typed_misuse.py").read_text().splitlines(), 1):
        m = _EXPECT.search(text)
        if m:
            expected.add(("typed_misuse.py", n, m[1]))
    assert len(expected) >= 7
    assert reported == expected, res.stdout + res.stderr
