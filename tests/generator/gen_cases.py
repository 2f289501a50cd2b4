"""Where the golden cases live and how one is generated (shared by the generator tests).

A case is a folder ``cases/<name>/`` holding ``<name>.capnp`` and ``expected.py``. A case made of
several schemas (imports across folders) lists its ``monarch-gen`` arguments, relative to the
case folder, in ``monarch-gen.args``; its other modules' goldens are ``expected_<module>.py``.
"""

from __future__ import annotations

import os
from pathlib import Path

from monarch.generator.generate import Output, generate

CASES = Path(__file__).parent / "cases"
CASE_NAMES = sorted(p.name for p in CASES.iterdir() if p.is_dir())


def case_args(name: str) -> tuple[list[str], list[str]]:
    """``(schemas, import dirs)`` of a case, relative to its folder."""
    args_file = CASES / name / "monarch-gen.args"
    if not args_file.exists():
        return [f"{name}.capnp"], []
    words = args_file.read_text().split()
    schemas: list[str] = []
    dirs: list[str] = []
    it = iter(words)
    for w in it:
        if w == "-I":
            dirs.append(next(it))
        else:
            schemas.append(w)
    return schemas, dirs


def generate_outputs(name: str) -> list[Output]:
    """Generate one case the way a user would: from inside its folder, by relative names."""
    old = Path.cwd()
    os.chdir(CASES / name)
    try:
        schemas, dirs = case_args(name)
        return generate(schemas, dirs)
    finally:
        os.chdir(old)


def generate_case(name: str) -> dict[str, bytes]:
    return {o.name: o.data for o in generate_outputs(name)}


def golden_path(name: str, module: str) -> Path:
    """The golden file of one generated module of a case."""
    return CASES / name / ("expected.py" if module == name else f"expected_{module}.py")
