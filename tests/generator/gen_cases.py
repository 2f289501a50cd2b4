"""Where the golden cases live and how one is generated (shared by the generator tests)."""

from __future__ import annotations

import os
from pathlib import Path

from monarch.generator.generate import generate

CASES = Path(__file__).parent / "cases"
CASE_NAMES = sorted(p.name for p in CASES.iterdir() if p.is_dir())


def generate_case(name: str) -> dict[str, bytes]:
    """Generate one case the way a user would: from inside its folder, by file name."""
    old = Path.cwd()
    os.chdir(CASES / name)
    try:
        return {o.name: o.data for o in generate([f"{name}.capnp"], [])}
    finally:
        os.chdir(old)
