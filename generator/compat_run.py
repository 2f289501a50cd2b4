"""Running ``monarch-gen compat``: load both versions (each in its own parser child) and compare.

With ``--against REV`` the old version of each schema is ``git show REV:<path>``, read from a
``git archive`` of that revision so relative imports resolve as they did then.
"""

from __future__ import annotations

import os
import subprocess
import tarfile
import tempfile
from pathlib import Path

from monarch._core.errors import GenerationError

from .compat import Change, compare
from .load import load

__all__ = ["run_compat"]


def _compare_files(
    old: str, new: str, dirs: list[str], old_dirs: list[str], old_label: str
) -> list[Change]:
    old_loaded = load([old], old_dirs)
    new_loaded = load([new], dirs)
    changes = compare(old_loaded, old, new_loaded, new)
    return [
        Change(old_label, c.line, c.column, c.breaking, c.message) if c.path == old else c
        for c in changes
    ]


def _archive(rev: str, dest: Path) -> tuple[Path, Path]:
    """Extract revision ``rev`` of the enclosing git repository into ``dest``: (repository
    root, root of the extracted revision)."""
    try:
        top = subprocess.run(
            ["git", "rev-parse", "--show-toplevel"], capture_output=True, text=True, check=True
        ).stdout.strip()
        blob = subprocess.run(
            ["git", "-C", top, "archive", "--format=tar", rev], capture_output=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        err = getattr(exc, "stderr", b"") or b""
        msg = err.decode(errors="replace").strip() if isinstance(err, bytes) else str(err)
        raise GenerationError(
            f"--against {rev}: cannot read that git revision: {msg or exc}"
        ) from exc
    tar_path = dest / "rev.tar"
    tar_path.write_bytes(blob)
    root = dest / "rev"
    with tarfile.open(tar_path) as tf:
        tf.extractall(root, filter="data")
    return Path(top), root


def run_compat(
    schemas: list[str], against: str | None, dirs: list[str], verbose: bool
) -> tuple[list[str], bool]:
    """The report lines and whether any change breaks the wire.

    Raises:
        SchemaError: a version does not load.
        GenerationError: wrong arguments, or the git revision cannot be read.
    """
    changes: list[Change] = []
    if against is None:
        if len(schemas) != 2:
            raise GenerationError("compat: give OLD NEW, or --against GIT_REV SCHEMA...")
        changes = _compare_files(schemas[0], schemas[1], dirs, dirs, schemas[0])
    else:
        with tempfile.TemporaryDirectory() as d:
            top, root = _archive(against, Path(d))
            for s in schemas:
                rel = os.path.relpath(os.path.realpath(s), top)
                old = root / rel
                if not old.is_file():
                    continue  # a new schema: nothing to break
                old_dirs = [str(root / os.path.relpath(os.path.realpath(x), top)) for x in dirs]
                changes += _compare_files(str(old), s, dirs, old_dirs, f"{against}:{rel}")
    breaking = any(c.breaking for c in changes)
    lines = [str(c) for c in changes if c.breaking or verbose]
    return lines, breaking
