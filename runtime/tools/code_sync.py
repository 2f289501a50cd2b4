"""Code sync and hot reload: ``await procs.sync_workspace(Workspace(dirs=[...]), auto_reload=True)``.

Monarch's ``HostMesh.sync_workspace`` (which rsyncs each directory to ``$WORKSPACE_DIR/<name>``
on every host) and its ``auto_reload``, rebuilt on this runtime:

- Where files go: every proc resolves its workspace root: ``$WORKSPACE_DIR`` when the proc has
  it (``spawn_procs(env={"WORKSPACE_DIR": ...})``), else ``$MONARCH_RUNTIME_DIR/workspace-<client>``
  (the client's job folder on its own host, removed when the client exits; the host agent's
  folder on other hosts). Directory ``d`` of the workspace lands in ``<root>/<remote path of d>``,
  which is put first on ``sys.path`` of every proc, so its modules import from the copy.
- Procs that see the same root directory (same kernel, device and inode: the procs of one host)
  share one copy: one of them receives the files. A root that is the client's own directory is
  left alone (nothing to copy).
- Only changed files travel: the client sends its manifest (SHA-256, mode, size, mtime per file);
  each host answers what it lacks, deletes files the workspace no longer has and fixes modes;
  then the missing files go as chunks of at most 4 MiB (read lazily, at most a few in flight), as
  endpoint messages to a system actor (``monarch_code_sync``) spawned on the procs: the runtime's
  own authenticated connections, no extra port, no ssh.
- ``auto_reload=True``: then every proc reloads the modules loaded from changed ``.py`` files
  (see :mod:`monarch.tools._sync_reload`: dependencies first, live actors' methods updated in
  place), so the next endpoint call runs the new code.
- ``watch=True``: after the first sync, a client thread syncs again on every save (watchfiles).

``HostMesh.sync_workspace`` (Monarch's form) syncs through one proc of its own per host, so
the files land in each host's root; ``ProcMesh.sync_workspace`` also puts the folders on its
procs' ``sys.path`` and reloads there. Procs spawned after a sync find the files on disk; the
next ``procs.sync_workspace`` (cheap when nothing changed) puts them on their ``sys.path``.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from monarch._core.future import Future
from monarch._core.shape import Shape
from monarch._mesh.actor import Actor
from monarch._mesh.endpoint import endpoint
from monarch._mesh.proc_mesh import HostMesh, ProcMesh

from . import _sync_files as files
from ._sync_reload import reload_files
from .config.workspace import Workspace

__all__ = ["CodeSyncActor", "SyncResult", "WorkspaceWatch", "sync_workspace"]

IN_FLIGHT = 4  # write messages outstanding per host: bounds memory for large files
CALL_TIMEOUT_S = 120.0
SMALL_BYTES = 256 << 10  # files up to this size travel several to a message


class CodeSyncActor(Actor):
    """The receiving end on one proc (a system actor, spawned by :func:`sync_workspace`).

    Endpoints run on this actor's own thread in the proc (sync endpoints), never on the proc's
    event loop.
    """

    def __init__(self) -> None:
        self._root = files.workspace_root()
        self._sink = files.FileSink(self._root)

    @endpoint
    def hello(self) -> dict[str, Any]:
        """This proc's workspace root and its id, host and pid."""
        return {
            "root": self._root,
            "id": files.root_id(self._root),
            "host": socket.gethostname(),
            "pid": os.getpid(),
        }

    @endpoint
    def same_dirs(self, idents: dict[str, tuple[str, int, int]]) -> list[str]:
        """The remote paths whose directory here is the client's own one."""
        out = []
        for scope, ident in idents.items():
            try:
                if files.dir_identity(
                    os.path.join(self._root, scope) if scope else self._root
                ) == tuple(ident):
                    out.append(scope)
            except OSError:
                continue
        return out

    @endpoint
    def plan(
        self, manifest: files.Manifest, scopes: list[str], same: list[str]
    ) -> tuple[list[str], int, int]:
        """See :meth:`FileSink.plan`."""
        return self._sink.plan(manifest, scopes, same)

    @endpoint
    def write(self, rel: str, offset: int, data: bytes, final: files.Entry | None) -> None:
        """See :meth:`FileSink.write`."""
        try:
            self._sink.write(rel, offset, data, final)
        except BaseException:
            self._sink.abort(rel)
            raise

    @endpoint
    def write_batch(self, items: list[tuple[str, bytes, files.Entry]]) -> None:
        """Write several small files whole (see :meth:`FileSink.write`)."""
        for rel, data, entry in items:
            try:
                self._sink.write(rel, 0, data, entry)
            except BaseException:
                self._sink.abort(rel)
                raise

    @endpoint
    def activate(self, scopes: list[str], changed: list[str], auto_reload: bool) -> list[str]:
        """Put the workspace's directories first on ``sys.path``; with ``auto_reload``, reload
        the modules loaded from ``changed`` (paths here or the client's own paths)."""
        import importlib

        for scope in reversed(scopes):
            d = os.path.join(self._root, scope) if scope else self._root
            if d in sys.path:
                sys.path.remove(d)
            sys.path.insert(0, d)
        importlib.invalidate_caches()
        if not auto_reload or not changed:
            return []
        return reload_files(set(changed))


@dataclass
class SyncResult:
    """What one sync did.

    Attributes:
        files_sent: files whose content travelled (counted once per host that received them).
        bytes_sent: their total size, bytes.
        files_deleted: files removed on the hosts (once per host).
        modes_changed: files whose permission bits alone were fixed (once per host).
        roots: each host's workspace root, by ``host:pid`` of the proc that received the files.
        reloaded: the modules each proc reloaded (``auto_reload``), by proc ``host:pid``.
        duration_s: seconds from the call to the last proc's answer.
    """

    files_sent: int = 0
    bytes_sent: int = 0
    files_deleted: int = 0
    modes_changed: int = 0
    roots: dict[str, str] = field(default_factory=dict)
    reloaded: dict[str, list[str]] = field(default_factory=dict)
    duration_s: float = 0.0

    def __repr__(self) -> str:
        mods = sorted({m for ms in self.reloaded.values() for m in ms})
        return (
            f"<SyncResult hosts={len(self.roots)} sent={self.files_sent} ({self.bytes_sent} B) deleted={self.files_deleted} "
            f"modes={self.modes_changed} reloaded={mods} procs={len(self.reloaded)} in {self.duration_s * 1e3:.0f} ms>"
        )


# proc address -> its code-sync actor (one point); the client spawns one per proc it syncs to
_actors: dict[str, Any] = {}
_actors_lock = threading.Lock()


def _actors_for(addrs: list[str]) -> list[Any]:
    with _actors_lock:
        new = [a for a in addrs if a not in _actors]
        if new:
            mesh = ProcMesh(new, Shape(["procs"], 0, [len(new)]), None, owned=False).spawn(
                "monarch_code_sync", CodeSyncActor
            )
            for i, a in enumerate(new):
                _actors[a] = mesh.slice(procs=i)
        return [_actors[a] for a in addrs]


def _proc_addrs(mesh: ProcMesh) -> list[str]:
    if mesh._stopped:
        from monarch._mesh.proc_mesh import ProcMeshStoppedError

        raise ProcMeshStoppedError("sync_workspace: this ProcMesh has been stopped")
    seen: dict[str, None] = {}
    for r in mesh._shape.ranks():
        seen.setdefault(mesh._addrs[r], None)
    return list(seen)


def _check(workspace: Any, conda: bool) -> None:
    if not isinstance(workspace, Workspace):
        raise TypeError(
            f"sync_workspace: expected a monarch.tools.config.workspace.Workspace, got {type(workspace).__name__}"
        )
    if conda:
        raise NotImplementedError(
            "sync_workspace(conda=True): syncing the conda environment is not built; sync directories only"
        )


def _sync_once(addrs: list[str], workspace: Workspace, auto_reload: bool) -> SyncResult:
    t0 = time.perf_counter()
    res = SyncResult()
    manifest, sources = files.scan({p: d for p, d in workspace.dirs.items()})
    scopes = list(workspace.dirs.values())
    idents = {d: files.dir_identity(str(p)) for p, d in workspace.dirs.items()}
    actors = _actors_for(addrs)
    hellos = [f.get(CALL_TIMEOUT_S) for f in [a.hello.call_one() for a in actors]]
    leaders: dict[str, int] = {}
    for i, h in enumerate(hellos):
        leaders.setdefault(h["id"], i)
    lead = list(leaders.values())
    sames = [f.get(CALL_TIMEOUT_S) for f in [actors[i].same_dirs.call_one(idents) for i in lead]]
    plans = [
        f.get(CALL_TIMEOUT_S)
        for f in [actors[i].plan.call_one(manifest, scopes, s) for i, s in zip(lead, sames)]
    ]
    errors: list[BaseException] = []

    def send(i: int, need: list[str]) -> None:
        try:
            pending: list[Future[Any]] = []

            def push(fut: Future[Any]) -> None:
                pending.append(fut)
                if len(pending) >= IN_FLIGHT:
                    pending.pop(0).get(CALL_TIMEOUT_S)

            batch: list[tuple[str, bytes, files.Entry]] = []
            batch_bytes = 0
            for rel in need:
                e = manifest[rel]
                if e.size_bytes <= SMALL_BYTES:
                    with open(sources[rel], "rb") as fh:
                        data = fh.read()
                    batch.append((rel, data, e))
                    batch_bytes += len(data)
                    if batch_bytes >= files.CHUNK_BYTES or len(batch) >= 512:
                        push(actors[i].write_batch.call_one(batch))
                        batch, batch_bytes = [], 0
                    continue
                for off, data in files.read_chunks(sources[rel], e.size_bytes):
                    last = off + len(data) >= e.size_bytes
                    push(actors[i].write.call_one(rel, off, data, e if last else None))
            if batch:
                push(actors[i].write_batch.call_one(batch))
            for p in pending:
                p.get(CALL_TIMEOUT_S)
        except BaseException as exc:
            errors.append(exc)

    threads = [
        threading.Thread(target=send, args=(i, p[0]), daemon=True, name="monarch code sync")
        for i, p in zip(lead, plans)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    changed_rel: set[str] = {r for r, e in manifest.items() if _last.get(sources[r]) != e.digest}
    for i, (need, deleted, chmods) in zip(lead, plans):
        h = hellos[i]
        res.roots[f"{h['host']}:{h['pid']}"] = h["root"]
        res.files_sent += len(need)
        res.bytes_sent += sum(manifest[r].size_bytes for r in need)
        res.files_deleted += deleted
        res.modes_changed += chmods
        changed_rel.update(need)
    changed: set[str] = set()
    if auto_reload:
        for r in changed_rel:
            if r.endswith(".py"):
                changed.add(sources[r])
                changed.update(os.path.join(hellos[i]["root"], r) for i in lead)
    outs = [
        f.get(CALL_TIMEOUT_S)
        for f in [a.activate.call_one(scopes, sorted(changed), auto_reload) for a in actors]
    ]
    for h, mods in zip(hellos, outs):
        res.reloaded[f"{h['host']}:{h['pid']}"] = list(mods)
    _remember(manifest, sources)
    res.duration_s = time.perf_counter() - t0
    return res


# digests of the last sync of this client, by local path: procs reading the client's own
# directory receive nothing, yet their modules must reload when a file changed since then
_last: dict[str, str] = {}


def _remember(manifest: files.Manifest, sources: dict[str, str]) -> None:
    _last.update({sources[r]: e.digest for r, e in manifest.items()})


def sync_workspace(
    mesh: Any,
    workspace: Any,
    *,
    conda: bool = False,
    auto_reload: bool = False,
    watch: bool = False,
) -> Future[Any]:
    """Copy the changed files of ``workspace`` to the procs of ``mesh`` (Monarch's
    ``sync_workspace``); reached as ``ProcMesh.sync_workspace`` / ``HostMesh.sync_workspace``.

    Args:
        mesh: a ProcMesh (its procs receive the files, get the folders on ``sys.path`` and
            reload), or a HostMesh (as in Monarch, a proc of its own per host receives the
            files, so they land in each host's workspace root; ``auto_reload`` reloads in that
            proc only: to reload live actors, sync their ProcMesh).
        workspace: the directories to sync.
        conda: sync the active conda environment too: not built (raises).
        auto_reload: after the files land, every proc reloads the modules of changed ``.py``
            files (and live actors run the new code).
        watch: keep syncing on every save from a client thread (watchfiles).

    Returns:
        A future (``await`` it, or ``.get(timeout)``) of a :class:`SyncResult`; with ``watch``,
        of a :class:`WorkspaceWatch` (its ``first`` is the first sync's result; ``stop()`` it).

    Raises:
        TypeError: ``workspace`` is not a ``Workspace``, or ``mesh`` not a ProcMesh/HostMesh.
        NotImplementedError: ``conda=True``.
        ProcMeshStoppedError: the ProcMesh was stopped.
        FileNotFoundError, NotADirectoryError, PermissionError, ValueError: (from the future) a
            workspace directory is missing or not a directory, a file is unreadable or not a
            regular file; each names the path.
    """
    _check(workspace, conda)
    temp: ProcMesh | None = None
    if isinstance(mesh, HostMesh):
        # as Monarch's HostMesh does: one proc per host of its own receives the files
        temp = mesh.spawn_procs(name="monarch_code_sync")
        target = temp
    elif isinstance(mesh, ProcMesh):
        target = mesh
    else:
        raise TypeError(
            f"sync_workspace: expected a ProcMesh or HostMesh, got {type(mesh).__name__}"
        )
    addrs = _proc_addrs(target)
    out: Future[Any] = Future()

    def run() -> None:
        keep = False
        try:
            first = _sync_once(addrs, workspace, auto_reload)
            if watch:
                out.set_result(WorkspaceWatch(target, workspace, auto_reload, first, own=temp))
                keep = True
            else:
                out.set_result(first)
        except BaseException as exc:
            out.set_exception(exc)
        finally:
            if temp is not None and not keep:
                temp.stop().get(30.0)

    threading.Thread(target=run, name="monarch sync_workspace", daemon=True).start()
    return out


_watches: set[WorkspaceWatch] = set()


class WorkspaceWatch:
    """Syncs a workspace again whenever one of its files is saved (``watch=True``).

    A client thread waits on watchfiles; each batch of changes triggers one sync of the same
    procs with the same ``auto_reload``. Stopped by :meth:`stop` or at the client's exit.

    Attributes:
        first: the first sync's result.
        results: every later sync's result, in order (errors are in ``errors``).
        errors: exceptions of failed syncs (the watch keeps going).
    """

    def __init__(
        self,
        mesh: ProcMesh,
        workspace: Workspace,
        auto_reload: bool,
        first: SyncResult,
        own: ProcMesh | None = None,
    ) -> None:
        import watchfiles

        self._own = own  # a HostMesh's own receiving procs, stopped with the watch

        self.first = first
        self.results: list[SyncResult] = []
        self.errors: list[BaseException] = []
        self._mesh = mesh
        self._workspace = workspace
        self._auto_reload = auto_reload
        self._stop = threading.Event()
        self._cond = threading.Condition()
        self._on_sync: list[Callable[[SyncResult], None]] = []
        self._watch = watchfiles
        self._thread = threading.Thread(
            target=self._run, name="monarch workspace watch", daemon=True
        )
        _watches.add(self)
        self._thread.start()

    def __repr__(self) -> str:
        state = "stopped" if self._stop.is_set() else "watching"
        return f"<WorkspaceWatch {state} dirs={[str(p) for p in self._workspace.dirs]} syncs={len(self.results)} errors={len(self.errors)}>"

    def _run(self) -> None:
        paths = [str(p) for p in self._workspace.dirs]
        for _changes in self._watch.watch(
            *paths,
            stop_event=self._stop,
            debounce=50,
            step=20,
            rust_timeout=500,
            yield_on_timeout=False,
        ):
            if self._stop.is_set():
                break
            try:
                res = _sync_once(_proc_addrs(self._mesh), self._workspace, self._auto_reload)
            except BaseException as exc:
                with self._cond:
                    self.errors.append(exc)
                    self._cond.notify_all()
                continue
            with self._cond:
                self.results.append(res)
                self._cond.notify_all()

    def wait_for_sync(self, count: int = 1, timeout_s: float = 30.0) -> SyncResult:
        """Block until ``count`` syncs happened since the watch started; the latest result.

        Raises:
            TimeoutError: fewer syncs within ``timeout_s`` seconds.
        """
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.results) >= count, timeout_s):
                raise TimeoutError(
                    f"WorkspaceWatch: {len(self.results)} of {count} syncs within {timeout_s} s (errors: {self.errors!r})"
                )
            return self.results[-1]

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop watching; returns once the watch thread has ended (a sync in progress finishes)."""
        self._stop.set()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout_s)
        _watches.discard(self)
        own, self._own = self._own, None
        if own is not None:
            own.stop().get(30.0)

    @property
    def running(self) -> bool:
        """Whether the watch thread is alive."""
        return self._thread.is_alive()


def _stop_watches() -> None:
    for w in list(_watches):
        w.stop()


import atexit  # noqa: E402  (registered after the definitions it calls)

atexit.register(_stop_watches)
