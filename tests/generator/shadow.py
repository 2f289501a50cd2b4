"""A link tree that shows the ``monarch`` package to mypy the way setuptools' package-dir maps it.

The default editable install hides the package from mypy (DESIGN.md), so type tests run mypy with
``MYPYPATH`` pointing at ``<tmp>/monarch`` made of symlinks to runtime/, generator/, generated/...
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
_SUBPACKAGES = {"generator": "generator", "generated": "generated", "idl": "idl", "rdma": "rdma"}


def make_shadow(dest: Path, generated: Path | None = None) -> Path:
    """Build ``dest/monarch`` and return ``dest`` (the directory to put on ``MYPYPATH``).

    Args:
        dest: an empty directory.
        generated: a folder to show as ``monarch.generated`` instead of the repository's.
    """
    pkg = dest / "monarch"
    pkg.mkdir(parents=True)
    for entry in (ROOT / "runtime").iterdir():
        if entry.name != "__pycache__":
            os.symlink(entry, pkg / entry.name)
    for name, folder in _SUBPACKAGES.items():
        src = generated if (name == "generated" and generated is not None) else ROOT / folder
        os.symlink(src, pkg / name)
    return dest
