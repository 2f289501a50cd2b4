"""HostMesh and ProcMesh: where actors run.

Semantics follow Meta Monarch's ``this_host().spawn_procs(per_host={...})`` and
``ProcMesh.spawn(name, cls, *args, **kwargs)``: spawning procs and actors does not block; actors'
``__init__`` runs before their first message; ``stop()`` ends them. The functions around
the meshes (``enable_transport``, ``attach_to_workers``, ``hosts_from_config``,
``shutdown_context``) are in :mod:`monarch._mesh.session`.
"""

from __future__ import annotations

import base64
import contextlib
import importlib
import logging
import math
import os
import threading
from collections.abc import Sequence
from typing import Any, TypeVar, overload

import cloudpickle

from .._core.errors import SupervisionError
from .._core.future import Future
from .._core.shape import Extent, MeshTrait, Shape
from .actor import Actor, SpawnsMesh, validate_actor_class
from .actor_mesh import ActorMesh
from .context import context
from .current import current_runtime
from .log_level import LogLevel
from .logs import ENV_RANK_BASE, LogMode, client_sink, flush_client_logs
from .supervision import current_owner

__all__ = [
    "HostMesh",
    "ProcMesh",
    "ProcMeshStoppedError",
    "this_host",
    "this_proc",
]

M = TypeVar("M")
A = TypeVar("A", bound=Actor)


class ProcMeshStoppedError(SupervisionError, RuntimeError):
    """A stopped ProcMesh was used (Monarch raises a ``RuntimeError`` here; it is also our
    ``SupervisionError``)."""


class ProcMesh(MeshTrait):
    """A mesh of procs (OS processes, or points packed several to a process).

    Args:
        addrs: address of the OS process of every point of the spawn, by spawn rank.
        shape: the (possibly sliced) shape over those points.
        host_mesh: the HostMesh it was spawned from, if any.
        owned: this process started the procs and may stop them.
    """

    def __init__(self, addrs: list[str], shape: Shape, host_mesh: HostMesh | None, *, owned: bool = True) -> None:
        self._addrs = list(addrs)
        self._shape = shape
        self._host_mesh = host_mesh
        self._owned = owned
        self._stopped = False
        self._log_level: Any = None  # the LogLevel actors of logging_option, spawned on first use

    def _new_with_shape(self, shape: Shape) -> ProcMesh:
        return ProcMesh(self._addrs, shape, self._host_mesh, owned=self._owned)

    @property
    def host_mesh(self) -> HostMesh:
        return self._host_mesh if self._host_mesh is not None else this_host()

    def __repr__(self) -> str:
        ext = dict(zip(self._shape.labels, self._shape.sizes))
        procs = len(set(self._addrs[r] for r in self._shape.ranks()))
        return f"<ProcMesh extent={ext} processes={procs}{' stopped' if self._stopped else ''}>"

    # Typing (see DESIGN.md, "typing trick"): a generated actor's subclass yields its generated
    # ``XMesh``; a plain Python actor class ``A`` yields ``A`` itself to type checkers, which
    # stands for its mesh there (``Actor`` declares the mesh operations for type checkers only,
    # and its ``@endpoint`` attributes are ``Endpoint[P, R]``). At run time the plain actor's
    # mesh is an ``ActorMesh``.
    @overload
    def spawn(self, name: str, cls: SpawnsMesh[M], *args: Any, **kwargs: Any) -> M: ...
    @overload
    def spawn(self, name: str, cls: type[A], *args: Any, **kwargs: Any) -> A: ...
    def spawn(self, name: str, cls: Any, *args: Any, **kwargs: Any) -> Any:
        """Spawn one actor of ``cls`` on every proc of this mesh; returns at once.

        Args:
            name: the mesh's name (shown in errors and reports).
            cls: an ``Actor`` subclass (a generated base's implementation on the IDL path).
            *args, **kwargs: passed to every actor's ``__init__`` (pickled).

        Returns:
            The actor mesh: the generated ``XMesh`` proxy for generated actors, else an
            ``ActorMesh`` whose attributes are the class's endpoints (typed as ``cls`` itself
            for type checkers: its endpoints and the mesh operations check, with no ``cast``).
            Shaped like this mesh.

        Raises:
            TypeError: ``cls`` is not a spawnable actor class (abstract, mixed sync/async).
            ProcMeshStoppedError: this proc mesh was stopped (a ``RuntimeError`` and a
                ``SupervisionError``).
        """
        if not isinstance(name, str):
            raise TypeError(f"spawn(name, cls, ...): name must be a str, got {type(name).__name__}")
        validate_actor_class(cls)
        if self._stopped:
            raise ProcMeshStoppedError("`ProcMesh` has already been stopped: cannot spawn on it")
        rt = current_runtime()
        ranks = self._shape.ranks()
        addrs = [self._addrs[r] for r in ranks]
        ref = rt.spawn_actors(name, cls, args, kwargs, addrs, self._shape.extent, current_owner())
        mesh_cls = getattr(cls, "__monarch_mesh__", None) or ActorMesh
        return mesh_cls(ref)

    def stop(self) -> Future[None]:
        """Stop every proc of this mesh (their actors run ``__cleanup__``); completes when all
        processes have exited. Procs that do not exit within 5 s are killed."""
        self._stopped = True
        flush_client_logs()  # what the procs' lines folded so far prints now, as Monarch's stop does
        if not self._owned:
            return Future.completed(None)
        return current_runtime().stop_processes(sorted(set(self._addrs)))

    async def logging_option(
        self, stream_to_client: bool = True, aggregate_window_sec: float | None = 3, level: int = logging.INFO
    ) -> None:
        """How this mesh's procs' output shows at the client (Monarch's ``logging_option``).

        Every proc's stdout, stderr and log records are always written to its log file on its
        host (``$MONARCH_LOG_DIR``, default ``<tmp>/monarch-logs-<uid>``; a failed proc's error
        names the file and quotes its last lines) and sent to the client, which prints each line
        on its own stdout or stderr (the stream the proc wrote), prefixed ``[host rank=R pid=P]``.
        Until this is called a mesh streams every line at once, unfolded (output keeps reaching
        the client's terminal as it did when procs shared it); calling it with its defaults
        folds lines as Monarch's defaults do (``stream_to_client=True``, a 3 s window, INFO).
        Output an endpoint printed through ``sys.stdout``/``sys.stderr`` before returning is
        printed (or folded) before the call's result is delivered; lines written by C code or
        subprocesses to fds 1/2 arrive in order per proc and stream, but not ordered with replies.

        Args:
            stream_to_client: print the procs' lines at the client; False: log files only.
            aggregate_window_sec: fold lines that differ only in numbers, hex ids or ranks into
                one line per window of this many seconds: ``[4 similar log lines, ranks 0-3 on
                host1] loss 0.123`` (the first line of the group, the count, and the ranks that
                printed it per host); None or 0: print each line as it arrives.
            level: the root logger level of every proc of this mesh (Monarch's: records below it
                are not emitted, in the log files either), and records below it are not printed at
                the client; prints are not filtered.

        Raises:
            ValueError: ``level`` is not in 0..255, or ``aggregate_window_sec`` is negative.
            TypeError: an argument has the wrong type.
        """
        if not isinstance(level, int) or isinstance(level, bool):
            raise TypeError(f"logging_option(level=...) must be an int, got {type(level).__name__}")
        if level < 0 or level > 255:
            raise ValueError(f"Invalid logging level: {level}")
        if aggregate_window_sec is not None:
            if not isinstance(aggregate_window_sec, (int, float)) or isinstance(aggregate_window_sec, bool):
                raise TypeError(f"aggregate_window_sec must be a number of seconds or None, got {aggregate_window_sec!r}")
            if aggregate_window_sec < 0:
                raise ValueError(f"aggregate_window_sec must be >= 0 seconds, got {aggregate_window_sec}")
        mode = LogMode(bool(stream_to_client), float(aggregate_window_sec) if aggregate_window_sec else None, level)
        client_sink(current_runtime().router).set_mode(set(self._addrs), mode)
        if self._log_level is None:  # one small actor per proc sets the procs' logger level
            self._log_level = self.spawn("monarch_log_level", LogLevel)
        await self._log_level.set_level.call(level)

    @property
    def initialized(self) -> Future[None]:
        """Completes when every proc of this mesh has started and answered (spawning itself is
        non-blocking: messages sent before then queue). Fails with ``SupervisionError`` when a
        proc died first."""
        return current_runtime().procs_ready(sorted(set(self._addrs[r] for r in self._shape.ranks())))

    async def __aenter__(self) -> ProcMesh:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()

    def __enter__(self) -> ProcMesh:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop().get(30.0)

    # the tensor engine (layer 5) is imported by name on first use: this module is layer 3
    def activate(self) -> Any:
        """``with procs.activate():`` torch ops on ``monarch.Tensor`` handles, and factories
        (``torch.rand``, ``torch.zeros``, ``torch.arange``), run on every rank of this mesh
        (Monarch's ``ProcMesh.activate``); ``monarch.no_mesh.activate()`` runs them locally.
        Spawns the mesh's tensor-store actors on first use. See :mod:`monarch.tensor`."""
        return importlib.import_module("monarch.tensor._api").activate_procs(self)

    def rank_tensor(self, dim: str | Sequence[str]) -> Any:
        """A ``monarch.Tensor`` holding each rank's coordinate along ``dim`` (0-d, int64); several
        dims give the combined row-major rank (Monarch's ``rank_tensor``).

        Raises:
            KeyError: ``dim`` is not a dimension of this mesh.
        """
        return importlib.import_module("monarch.tensor._api").rank_tensor(self, dim)

    def rank_tensors(self) -> dict[str, Any]:
        """``{dim: self.rank_tensor(dim)}`` for every dimension (Monarch's ``rank_tensors``)."""
        return importlib.import_module("monarch.tensor._api").rank_tensors(self)  # type: ignore[no-any-return]

    # the tools (layer 5) are imported by name on first use, as the tensor engine is
    @property
    def env(self) -> Any:
        """The environment variables of this mesh's procs: ``procs.env.get("CUDA_VISIBLE_DEVICES")``
        (a ``ValueMesh[str | None]``), ``procs.env.list(prefix="NCCL_")``, ``procs.env.set(VAR=value)``.
        See :class:`monarch.tools.env.ProcEnv`."""
        return importlib.import_module("monarch.tools.env").ProcEnv(self)

    def sync_workspace(self, workspace: Any, conda: bool = False, auto_reload: bool = False, *, watch: bool = False) -> Any:
        """Copy the changed files of ``workspace`` (a ``monarch.tools.config.workspace.Workspace``)
        to this mesh's procs (Monarch's ``sync_workspace``). See
        :func:`monarch.tools.code_sync.sync_workspace` for arguments, result and errors."""
        return importlib.import_module("monarch.tools.code_sync").sync_workspace(
            self, workspace, conda=conda, auto_reload=auto_reload, watch=watch
        )


class HostMesh(MeshTrait):
    """A mesh of hosts that can start procs (Monarch's ``HostMesh``).

    Args:
        shape: the hosts' dimensions.
        hosts: the host names, by rank; None means this machine.
        python_executable: the interpreter procs spawned from this mesh run; None means this
            process's own (``sys.executable``, or a fork of it from the fork server).
        agents: the host agents' addresses (``tcp:HOST:PORT``), by host rank, of a mesh made by
            :func:`attach_to_workers`; None: every host of the mesh is this machine.
    """

    def __init__(
        self,
        shape: Shape,
        hosts: list[str] | None = None,
        *,
        python_executable: str | None = None,
        agents: list[str] | None = None,
    ) -> None:
        self._shape = shape
        self._hosts = hosts or ["local"]
        self._python_executable = python_executable
        self._agents = agents

    def _new_with_shape(self, shape: Shape) -> HostMesh:
        return HostMesh(shape, self._hosts, python_executable=self._python_executable, agents=self._agents)

    def __repr__(self) -> str:
        exe = f" python={self._python_executable!r}" if self._python_executable is not None else ""
        agents = f" agents={[self._agents[r] for r in self._shape.ranks()]}" if self._agents is not None else ""
        return f"<HostMesh extent={dict(zip(self._shape.labels, self._shape.sizes))}{exe}{agents}>"

    @property
    def initialized(self) -> Future[None]:
        """Completes when every host agent of this mesh accepted us (at once for this machine's
        hosts); fails with ``ConnectError`` when one cannot be reached or refuses our token."""
        if self._agents is None:
            return Future.completed(None)
        rt = current_runtime()
        links = [rt.remote.attach(self._agents[r]) for r in self._shape.ranks()]
        out: Future[None] = Future()

        def wait() -> None:
            try:
                for link in links:
                    link.ready.get(60.0)
            except BaseException as exc:
                out.set_exception(exc)
            else:
                out.set_result(None)

        threading.Thread(target=wait, name="monarch host mesh initialized", daemon=True).start()
        return out

    def shutdown(self) -> Future[None]:
        """Stop every proc this client started on these hosts, then disconnect from their agents:
        an agent of ``run_worker_loop_forever`` then stops (its process exits, as Monarch's), one
        of ``monarch host serve`` keeps serving other clients. Monarch's ``HostMesh.shutdown``;
        this machine's hosts have nothing to shut down."""
        if self._agents is None:
            return Future.completed(None)
        rt = current_runtime()
        links = {id(lk): lk for lk in (rt.remote.attach(self._agents[r]) for r in self._shape.ranks())}
        addrs = [a for a, lk in rt.remote.procs.items() if id(lk) in links]
        out: Future[None] = Future()

        def run() -> None:
            try:
                rt.stop_processes(addrs).get(30.0)
            finally:
                for lk in links.values():
                    with contextlib.suppress(Exception):  # a lost agent has nothing to shut down
                        lk.send({"op": "shutdown"})  # agents of run_worker_loop_forever exit
                    lk.close()
                out.set_result(None)

        threading.Thread(target=run, name="monarch host mesh shutdown", daemon=True).start()
        return out

    def stop(self) -> Future[None]:
        """Same as :meth:`shutdown`."""
        return self.shutdown()

    def sync_workspace(self, workspace: Any, conda: bool = False, auto_reload: bool = False, *, watch: bool = False) -> Any:
        """Copy the changed files of ``workspace`` (a ``monarch.tools.config.workspace.Workspace``)
        to this mesh's hosts (Monarch's ``HostMesh.sync_workspace``). See
        :func:`monarch.tools.code_sync.sync_workspace` for arguments, result and errors."""
        return importlib.import_module("monarch.tools.code_sync").sync_workspace(
            self, workspace, conda=conda, auto_reload=auto_reload, watch=watch
        )

    @property
    def is_fake_in_process(self) -> bool:
        """Whether this mesh's procs are simulated inside the client's own process (Monarch's
        ``is_fake_in_process``). Always False here: every proc this mesh spawns is a real OS
        process."""
        return False

    def with_python_executable(self, path: str) -> HostMesh:
        """This mesh, with procs spawned from it running the interpreter at ``path`` (Monarch's
        ``with_python_executable``, e.g. a wrapper script that sets up the environment and execs
        Python). The interpreter must be able to import ``monarch`` and the actors' modules.

        Such procs start from scratch with that interpreter (not from the fork server), and
        procs they spawn from ``this_host()`` use it too.

        Args:
            path: an executable file.

        Returns:
            A new HostMesh of the same shape; this one is unchanged.

        Raises:
            TypeError: ``path`` is not a str (or ``os.PathLike``).
            ValueError: ``path`` is not an executable file.
        """
        if isinstance(path, os.PathLike):
            path = os.fspath(path)
        if not isinstance(path, str):
            raise TypeError(f"with_python_executable(path): path must be a str, got {type(path).__name__}")
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            raise ValueError(f"with_python_executable: {path!r} is not an executable file")
        return HostMesh(self._shape, self._hosts, python_executable=os.path.abspath(path))

    def spawn_procs(
        self,
        per_host: dict[str, int] | None = None,
        *,
        name: str = "procs",
        processes: int | None = None,
        bootstrap: Any = None,
        env: dict[str, str] | None = None,
    ) -> ProcMesh:
        """Start procs on every host of this mesh; returns at once.

        Args:
            per_host: the dimensions added per host, e.g. ``{"gpus": 4}``; None means one proc.
            name: prefix of the procs' names in reports.
            processes: pack the points onto this many OS processes (contiguous blocks), so a
                mesh of many actors needs few processes; None means one process per point.
            bootstrap: a callable run in each new proc before any actor (Monarch's bootstrap).
            env: extra environment variables for the procs.

        Returns:
            A ProcMesh with extent ``{**host dims, **per_host}``.

        Raises:
            ValueError: a dimension label clashes with the host mesh's, or a size is invalid.
            OSError: an interpreter could not be started.
        """
        per_host = dict(per_host or {})
        clash = set(per_host) & set(self._shape.labels)
        if clash:
            raise ValueError(f"per_host labels {sorted(clash)} overlap with host labels {list(self._shape.labels)}")
        for k, v in per_host.items():
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"per_host[{k!r}] must be a positive int, got {v!r}")
        labels = list(self._shape.labels) + list(per_host)
        sizes = list(self._shape.sizes) + list(per_host.values())
        n = math.prod(sizes) if sizes else 1
        nproc = n if processes is None else max(1, min(int(processes), n))
        extra = dict(env or {})
        if bootstrap is not None:
            extra["MONARCH_BOOTSTRAP"] = base64.b64encode(cloudpickle.dumps(bootstrap)).decode()
        rt = current_runtime()
        if self._agents is not None:
            return self._spawn_remote(rt, math.prod(per_host.values()) if per_host else 1, name, extra, Shape(labels, 0, sizes))
        handles = rt.procs.spawn(nproc, name, extra, python_executable=self._python_executable)
        per = -(-n // nproc)
        addrs = [handles[i // per].addr for i in range(n)]
        mesh = ProcMesh(addrs, Shape(labels, 0, sizes), self)
        rt.supervisor.register_procs(current_owner(), mesh)
        return mesh


    def _spawn_remote(self, rt: Any, per: int, name: str, env: dict[str, str], shape: Shape) -> ProcMesh:
        """One request per host agent (in parallel); procs in host-rank order."""
        assert self._agents is not None
        links = [rt.remote.attach(self._agents[r]) for r in self._shape.ranks()]
        results: list[list[str] | BaseException] = [[] for _ in links]

        def one(i: int) -> None:
            try:
                # the host's first rank: its procs' log lines are prefixed with their mesh ranks
                results[i] = rt.remote.spawn(links[i], per, name, {**env, ENV_RANK_BASE: str(i * per)})
            except BaseException as exc:
                results[i] = exc

        threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(len(links))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        addrs: list[str] = []
        for r in results:
            if isinstance(r, BaseException):
                started = [a for x in results if not isinstance(x, BaseException) for a in x]
                if started:
                    rt.stop_processes(started, 0.0)
                raise r
            addrs.extend(r)
        mesh = ProcMesh(addrs, shape, self)
        rt.supervisor.register_procs(current_owner(), mesh)
        return mesh


_THIS_HOST = HostMesh(Shape([], 0, [], []))


def this_host() -> HostMesh:
    """The host this code runs on (Monarch's ``this_host``); in a proc started from a
    ``with_python_executable`` mesh, procs it spawns use that interpreter too."""
    exe = os.environ.get("MONARCH_PYTHON_EXECUTABLE")
    if exe:
        return HostMesh(_THIS_HOST._shape, python_executable=exe)
    return _THIS_HOST


def this_proc() -> ProcMesh:
    """The proc this code runs on: the client's own process at the root, else the actor's."""
    return context().actor_instance.proc  # type: ignore[no-any-return]


__all__ += ["Extent"]
