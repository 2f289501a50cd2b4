"""``Workspace``: the local directories that ``sync_workspace`` copies to a mesh's hosts.

Monarch's ``monarch.tools.config.workspace.Workspace``: ``dirs`` is a list of local directories
(each lands in ``$WORKSPACE_DIR/<its name>`` on every host) or a dict ``{local: remote relpath}``
(``""`` puts a directory's contents straight into ``$WORKSPACE_DIR``). Where ``$WORKSPACE_DIR``
is when the procs do not set it: see :mod:`monarch.tools.code_sync`.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path, PurePosixPath
from typing import Any

__all__ = ["Workspace"]


def _check_remote(dst: Any, src: Path) -> str:
    if not isinstance(dst, str):
        raise TypeError(
            f"Workspace: the remote path of {str(src)!r} must be a str, got {type(dst).__name__}"
        )
    p = PurePosixPath(dst)
    if p.is_absolute() or ".." in p.parts:
        raise ValueError(
            f"Workspace: the remote path {dst!r} of {str(src)!r} must be relative to $WORKSPACE_DIR, without '..'"
        )
    return str(p) if dst else ""


def _check_local(src: Any) -> Path:
    if not isinstance(src, (str, os.PathLike)):
        raise TypeError(
            f"Workspace: a directory must be a str or os.PathLike, got {type(src).__name__}"
        )
    if not os.fspath(src):
        raise ValueError(
            "Workspace: an empty directory name would sync the current directory; name it explicitly"
        )
    return Path(src)


class Workspace:
    """One or more local directories holding your project(s) (Monarch's ``Workspace``).

    Args:
        dirs: a list of local directories (each synced to ``$WORKSPACE_DIR/<directory name>``),
            or a dict ``{local directory: remote path relative to $WORKSPACE_DIR}`` (``""``: the
            directory's contents go straight into ``$WORKSPACE_DIR``); None: no directories.
        env: the local environment Monarch would also ship (a conda env); kept for API
            compatibility, not synced here (``sync_workspace(conda=True)`` raises).

    Raises:
        TypeError: ``dirs`` is not a list or dict, or holds something other than paths.
        ValueError: an empty directory name, or a remote path that is absolute or uses ``..``,
            or two directories mapped to the same remote path.

    Directories are checked to exist when synced (``FileNotFoundError`` names the path).
    """

    def __init__(
        self, dirs: list[Path | str] | dict[Path | str, str] | None = None, env: Any = None
    ) -> None:
        self.env = env
        self.dirs: dict[Path, str] = {}  # local -> remote relpath
        if dirs is None:
            pass
        elif isinstance(dirs, (list, tuple)):
            for d in dirs:
                p = _check_local(d)
                self.dirs[p] = p.resolve().name if p.name in ("", ".", "..") else p.name
        elif isinstance(dirs, dict):
            for src, dst in dirs.items():
                p = _check_local(src)
                self.dirs[p] = _check_remote(dst, p)
        else:
            raise TypeError(
                f"Workspace(dirs=...): expected a list or dict of directories, got {type(dirs).__name__}"
            )
        seen: dict[str, Path] = {}
        for src, dst in self.dirs.items():
            if dst in seen:
                raise ValueError(
                    f"Workspace: {str(seen[dst])!r} and {str(src)!r} would both sync to $WORKSPACE_DIR/{dst}"
                )
            seen[dst] = src

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Workspace):
            return NotImplemented
        return self.env == other.env and self.dirs == other.dirs

    def __hash__(self) -> int:
        return hash(tuple(sorted((str(k), v) for k, v in self.dirs.items())))

    def __repr__(self) -> str:
        inner = ", ".join(f"{str(k)!r}: {v!r}" for k, v in self.dirs.items())
        return f"Workspace(dirs={{{inner}}})"

    def merge(self, outdir: str | Path) -> None:
        """Copy the directories of this workspace into ``outdir`` (Monarch's ``merge``), each to
        its remote path under it."""
        out = Path(outdir)
        out.mkdir(parents=True, exist_ok=True)
        for src, dst in self.dirs.items():
            shutil.copytree(src, out / dst, dirs_exist_ok=True)

    @staticmethod
    def null() -> Workspace:
        """A workspace with no directories and no environment (Monarch's ``Workspace.null``)."""
        return Workspace(env=None)
