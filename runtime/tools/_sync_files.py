"""The file side of code sync: manifests with content hashes (client) and applying them (procs).

A manifest maps a path relative to the host's workspace root (``<remote dir>/<path in it>``,
POSIX separators) to an :class:`Entry`: the file's SHA-256, permission bits, size and mtime.
Hashes are cached by ``(size, mtime_ns, inode, ctime_ns)``; as in git's "racy" rule, a file
modified less than :data:`RACY_S` before it was hashed is hashed again next time, since a
second write within the file system's timestamp granularity would not change its stat.
"""

from __future__ import annotations

import errno
import hashlib
import importlib.util
import os
import stat
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["CHUNK_BYTES", "Entry", "FileSink", "Manifest", "dir_identity", "scan", "workspace_root"]

CHUNK_BYTES = 4 << 20  # one write message carries at most this much file content
RACY_S = 2.0
SKIP_DIRS = frozenset({"__pycache__"})
MARKER = ".monarch-workspace-id"
PART = ".monarch-part"


@dataclass(frozen=True)
class Entry:
    """One file of a manifest.

    Attributes:
        digest: SHA-256 of the content, hex.
        mode: permission bits (``st_mode & 0o7777``).
        size_bytes: the content's size.
        mtime_ns: modification time, nanoseconds since the epoch (kept on the copy, as rsync -a).
    """

    digest: str
    mode: int
    size_bytes: int
    mtime_ns: int


Manifest = dict[str, Entry]

_cache_lock = threading.Lock()
# path -> (size, mtime_ns, ino, ctime_ns, digest, racy)
_hash_cache: dict[str, tuple[int, int, int, int, str, bool]] = {}


def _digest(
    path: str, st: os.stat_result, cache: dict[str, tuple[int, int, int, int, str, bool]]
) -> str:
    key = (st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)
    hit = cache.get(path)
    if hit is not None and hit[:4] == key and not hit[5]:
        return hit[4]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(1 << 20)
            if not block:
                break
            h.update(block)
    d = h.hexdigest()
    cache[path] = (*key, d, time.time_ns() - st.st_mtime_ns < RACY_S * 1e9)
    return d


def dir_identity(path: str) -> tuple[str, int, int]:
    """``(boot id, device, inode)`` of a directory: equal on two procs exactly when they see the
    same directory of the same running kernel (network namespaces of one machine included)."""
    st = os.stat(path)
    return (_boot_id(), st.st_dev, st.st_ino)


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def _walk(src: Path) -> Iterator[tuple[str, str]]:
    """(absolute path, path relative to ``src``) of every regular file under ``src``; symlinked
    files are followed, symlinked directories are not entered (no cycles)."""
    for dirpath, dirnames, filenames in os.walk(src, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
        rel_dir = os.path.relpath(dirpath, src)
        for name in sorted(filenames):
            if name.endswith((".pyc", PART)):
                continue
            full = os.path.join(dirpath, name)
            yield full, name if rel_dir == "." else f"{rel_dir}/{name}".replace(os.sep, "/")


def scan(dirs: dict[Path, str]) -> tuple[Manifest, dict[str, str]]:
    """The manifest of a workspace's directories, and each entry's local absolute path.

    Args:
        dirs: local directory -> remote path relative to the workspace root (``""``: the root).

    Raises:
        FileNotFoundError: a directory does not exist.
        NotADirectoryError: a directory is a file.
        PermissionError: a file cannot be read.
        ValueError: a file is not a regular file (a FIFO, socket or device).
    """
    manifest: Manifest = {}
    sources: dict[str, str] = {}
    for src, dst in dirs.items():
        if not src.exists():
            raise FileNotFoundError(
                errno.ENOENT, "sync_workspace: workspace directory does not exist", str(src)
            )
        if not src.is_dir():
            raise NotADirectoryError(
                errno.ENOTDIR, "sync_workspace: workspace entry is not a directory", str(src)
            )
        for full, rel in _walk(src):
            try:
                st = os.stat(full)
            except FileNotFoundError:
                continue  # a dangling symlink, or deleted while we walked
            if not stat.S_ISREG(st.st_mode):
                raise ValueError(
                    f"sync_workspace: {full!r} is not a regular file (mode {stat.filemode(st.st_mode)}); remove it from the workspace"
                )
            try:
                with _cache_lock:
                    d = _digest(full, st, _hash_cache)
            except PermissionError as exc:
                raise PermissionError(
                    errno.EACCES, "sync_workspace: cannot read workspace file", full
                ) from exc
            key = f"{dst}/{rel}" if dst else rel
            manifest[key] = Entry(d, stat.S_IMODE(st.st_mode), st.st_size, st.st_mtime_ns)
            sources[key] = full
    return manifest, sources


def read_chunks(path: str, size_bytes: int) -> Iterator[tuple[int, bytes]]:
    """``(offset, data)`` chunks of at most :data:`CHUNK_BYTES` of a file (one empty chunk for an
    empty file); read lazily, so a large file is never held whole."""
    with open(path, "rb") as f:
        off = 0
        while True:
            data = f.read(CHUNK_BYTES)
            if not data and off > 0:
                return
            yield off, data
            off += len(data)
            if len(data) < CHUNK_BYTES:
                return


def workspace_root() -> str:
    """Where a proc's workspace lives: ``$WORKSPACE_DIR`` (Monarch's variable) when set, else
    ``$MONARCH_RUNTIME_DIR/workspace-<client>`` (the client's job folder on its own host, the
    host agent's folder on other hosts; ``<client>`` tells apart clients of one agent)."""
    root = os.environ.get("WORKSPACE_DIR")
    if root:
        return os.path.abspath(root)
    base = os.environ.get("MONARCH_RUNTIME_DIR") or "/tmp"
    client = hashlib.sha256(os.environ.get("MONARCH_ROOT_ADDR", "").encode()).hexdigest()[:12]
    return os.path.join(base, f"workspace-{client}")


def root_id(root: str) -> str:
    """The id of the workspace root ``root`` (created with an id file if new): procs that see the
    same directory read the same id, so one of them receives the files for all."""
    os.makedirs(root, exist_ok=True)
    marker = os.path.join(root, MARKER)
    try:
        with open(marker) as f:
            return f.read().strip()
    except FileNotFoundError:
        pass
    tmp = f"{marker}.{os.getpid()}.{uuid.uuid4().hex}"
    with open(tmp, "w") as f:
        f.write(uuid.uuid4().hex)
    try:
        os.link(tmp, marker)  # atomic: the first proc's id wins
    except FileExistsError:
        pass
    finally:
        os.unlink(tmp)
    with open(marker) as f:
        return f.read().strip()


class FileSink:
    """The receiving side on one host: compares a manifest with the files under ``root``,
    deletes and re-modes what it can, and writes the chunks it is sent.

    Args:
        root: the host's workspace root.
    """

    def __init__(self, root: str) -> None:
        self.root = root
        self._cache: dict[str, tuple[int, int, int, int, str, bool]] = {}
        self._open: dict[str, tuple[Any, Any]] = {}  # rel -> (file, hasher) being received

    def _local(self, rel: str) -> str:
        path = os.path.normpath(os.path.join(self.root, rel))
        if not path.startswith(self.root + os.sep):
            raise ValueError(f"code sync: path {rel!r} leaves the workspace root")
        return path

    def plan(
        self, manifest: Manifest, scopes: list[str], same: list[str]
    ) -> tuple[list[str], int, int]:
        """Delete files of ``scopes`` that the manifest lacks, fix modes, and name what to send.

        Args:
            manifest: the client's files.
            scopes: the remote directories the workspace owns (``""``: the whole root).
            same: scopes that are the client's own directory (nothing to copy or delete there).

        Returns:
            ``(paths to send, files deleted, modes changed)``.
        """
        need: list[str] = []
        chmods = 0
        for rel, e in manifest.items():
            if any(rel == s or rel.startswith(s + "/") for s in same if s):
                continue
            path = self._local(rel)
            try:
                st = os.stat(path)
                d = _digest(path, st, self._cache) if st.st_size == e.size_bytes else None
            except OSError:
                d = None
            if d != e.digest:
                need.append(rel)
            elif stat.S_IMODE(st.st_mode) != e.mode:
                os.chmod(path, e.mode)
                chmods += 1
        deleted = 0
        for scope in scopes:
            if scope in same:
                continue
            base = self._local(scope) if scope else self.root
            if not os.path.isdir(base):
                continue
            for full, rel in _walk(Path(base)):
                key = f"{scope}/{rel}" if scope else rel
                if key == MARKER or key in manifest:
                    continue
                if not scope and any(key.startswith(s + "/") for s in scopes if s):
                    continue
                os.unlink(full)
                self._cache.pop(full, None)
                _drop_pyc(full)
                deleted += 1
        return need, deleted, chmods

    def write(self, rel: str, offset: int, data: bytes, final: Entry | None) -> None:
        """Write one chunk of ``rel`` (chunks arrive in order); on the last (``final``), check the
        hash and put the file in place atomically with its mode and mtime.

        Raises:
            ValueError: the received content does not hash to ``final.digest``.
        """
        path = self._local(rel)
        if offset == 0:
            self.abort(rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            self._open[rel] = (open(path + PART, "wb"), hashlib.sha256())
        f, h = self._open[rel]
        f.write(data)
        h.update(data)
        if final is None:
            return
        del self._open[rel]
        f.close()
        if h.hexdigest() != final.digest:
            os.unlink(path + PART)
            raise ValueError(
                f"code sync: {rel!r} arrived with a different hash (changed while sending?); sync again"
            )
        os.chmod(path + PART, final.mode)
        os.utime(path + PART, ns=(final.mtime_ns, final.mtime_ns))
        os.replace(path + PART, path)
        _drop_pyc(path)
        st = os.stat(path)
        # our own write: trusted on the next plan even though it is recent
        self._cache[path] = (
            st.st_size,
            st.st_mtime_ns,
            st.st_ino,
            st.st_ctime_ns,
            final.digest,
            False,
        )

    def abort(self, rel: str) -> None:
        """Drop a partly received file."""
        got = self._open.pop(rel, None)
        if got is not None:
            got[0].close()
            try:
                os.unlink(self._local(rel) + PART)
            except FileNotFoundError:
                pass


def _drop_pyc(path: str) -> None:
    """Remove the bytecode cached for ``path``: its validation (mtime in seconds + size) misses a
    same-size edit within a second, and we keep mtimes."""
    if path.endswith(".py"):
        try:
            os.unlink(importlib.util.cache_from_source(path))
        except (FileNotFoundError, ValueError, NotImplementedError):
            pass
