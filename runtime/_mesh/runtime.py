"""The composition root: the only place that builds a process's runtime and wires its parts.

A :class:`Runtime` owns the event loop's collaborators and passes each its dependencies by
constructor: the :class:`~monarch._mesh.router.Router` (links, FIFO, ports, liveness), the
:class:`~monarch._mesh.procs.ProcManager` (child OS processes), the
:class:`~monarch._mesh.supervision.Supervisor` (ownership tree) and the
:class:`~monarch._mesh.hosting.ActorHost` (local actors). Nothing below it looks up a global; the
user-facing objects find their process's runtime through :mod:`monarch._mesh.current`.

In the client the event loop runs on a daemon thread started on first use
(:func:`start_client_runtime`); in a proc it is the main thread (see ``proc_main``).
"""

from __future__ import annotations

import asyncio
import atexit
import importlib
import logging
import os
import secrets
import shutil
import socket
import sys
import tempfile
import threading
import uuid
from typing import Any

from .._core.errors import SupervisionError
from .._core.failure import MeshFailure
from .._core.future import Future, loop_thread_marker
from .._core.shape import Extent, Point, Shape
from .._transport.base import CloseHandler, FrameHandler, Transport, TransportSettings
from .._transport.codec import Codec
from .._transport.messages import ControlOp
from .._transport.pickle_codec import PICKLE_CODEC, dumps
from .._transport.sockets import SocketTransport
from .._transport.tls import TlsConfig
from . import current
from .actor_mesh import ActorMesh, MeshRef
from .admin import AdminEndpoint
from .admin_collect import SystemAgents
from .context import EMPTY_EXTENT, Context, Instance, current_creator, install_log_prefix
from .controller import ControllerRegistry, serve_controller_requests
from .endpoint import INIT_PROBE, EndpointSpec
from .host_client import RemoteHosts, requested_listen
from .hosting import ActorHost, pickle_spawn
from .port import Port
from .proc_mesh import ProcMesh
from .procs import ProcManager
from .router import Router, TransportFactory
from .settings import (
    RuntimeSettings,
    default_transport_listen,
    log_prefix_enabled,
    settings_from_config,
)
from .sinks import OneSink, ValueMeshSink
from .supervision import Supervisor, fault_hooks
from .zygote import GUARD_ENV, ZygoteClient

__all__ = ["Runtime", "new_loop", "start_client_runtime", "system_agents"]

log = logging.getLogger("monarch.runtime")

# every actor answers this reserved endpoint once its __init__ ran (ActorMesh.initialized)
_INIT_SPEC = EndpointSpec(name=INIT_PROBE, py_name=INIT_PROBE)


class Runtime:
    """One per process; built by :func:`start_client_runtime` or ``proc_main``.

    Args:
        loop: this process's event loop.
        listen: a bound listening socket (a proc's, from its parent) or an address to bind.
        name: readable name of this process (``client``, ``trainers/3``).
        runtime_dir: the job's private folder for Unix sockets.
        owns_dir: remove ``runtime_dir`` at shutdown (the root client).
        token: the job's cluster token (authenticates peers).
        parent_addr: the owner of this proc; None at the root.
        root_addr: the job's root client (hosts the controllers); None: this process, or its parent.
        settings: see :class:`RuntimeSettings`.
        transport: makes the transport from the router's handlers; None: the socket transport.
        fork_server: a fork server launched early by :func:`start_client_runtime`.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        listen: socket.socket | str,
        *,
        name: str,
        runtime_dir: str,
        owns_dir: bool,
        token: bytes | None,
        parent_addr: str | None = None,
        root_addr: str | None = None,
        settings: RuntimeSettings | None = None,
        transport: TransportFactory | None = None,
        fork_server: ZygoteClient | None = None,
    ) -> None:
        self.settings = settings or RuntimeSettings()
        self.loop = loop
        self.name = name
        self.runtime_dir = runtime_dir
        self.owns_dir = owns_dir
        self.token = token
        self.parent_addr = parent_addr
        self.loop_thread: threading.Thread | None = None
        self.exit_status: int | None = None  # set when an unhandled failure must end the client
        self._closed = False
        self._shutdown_done = threading.Event()
        self._this_proc: ProcMesh | None = None
        child_env = dict(self.settings.child_env)
        child_env["MONARCH_RUNTIME_DIR"] = runtime_dir
        if token is not None:
            child_env["MONARCH_CLUSTER_TOKEN"] = token.decode()
        if parent_addr is None and owns_dir and "MONARCH_DEBUG_CONTROLLER" not in os.environ:
            # the root client: breakpoint() in its procs reaches `monarch debug` (a Unix socket in
            # its own runtime folder, removed with it, and one idle thread; the tools' module is
            # imported by name: it is layer 5). In-memory runtimes (monarch.testing) share a folder
            # they do not own and spawn no procs: no controller.
            child_env.update(importlib.import_module("monarch.tools.debug_server").install(token, runtime_dir))
        if transport is None:
            transport = _socket_transport(loop, token, self.settings.transport, self.settings.tls)
        self.router = Router(loop, listen, transport=transport, name=name, limits=self.settings.limits)
        self.procs = ProcManager(
            self.router,
            runtime_dir=runtime_dir,
            child_env=child_env,
            use_fork_server=self.settings.use_fork_server and parent_addr is None,
            fork_server=fork_server,
        )
        self.supervisor = Supervisor(
            self.router,
            parent_addr=parent_addr,
            pid_of=self.procs.pid_of,
            on_unhandled=self._unhandled,
            stop_mesh=self.stop_actor_mesh,
        )
        self.host = ActorHost(
            self.router,
            self.supervisor,
            proc_mesh_factory=self.this_proc_mesh,
            port_factory=_response_port,
            on_proc_fails=self._proc_fails,
        )
        self.root_addr = root_addr or parent_addr or self.router.addr
        child_env["MONARCH_ROOT_ADDR"] = self.root_addr
        self.procs.child_env["MONARCH_ROOT_ADDR"] = self.root_addr
        # procs that host agents on other machines started for this process
        self.remote = RemoteHosts(self.router, token=token, child_env=self.procs.child_env, supervisor_expects=self.supervisor.expect_exit)
        self.supervisor.where_of = self.remote.where_of  # failures of remote procs name their host
        self.controllers: ControllerRegistry | None = None
        if parent_addr is None:
            self.controllers = ControllerRegistry(lambda name, cls, *a, **k: self.this_proc_mesh().spawn(name, cls, *a, **k))
            serve_controller_requests(self)
        self.router.on_hung(self._hung)
        self.router.handle_control(ControlOp.PING, self._on_ping)
        # the client is "root" (Monarch's name of the root instance); a proc's own context, its name
        inst = Instance(Point(0, EMPTY_EXTENT), f"{name}[0]", "root" if parent_addr is None else name, self.router.addr, os.getpid())
        inst._proc = self.this_proc_mesh()
        self.root_context = Context(inst, Point(0, EMPTY_EXTENT))
        self.on_proc_fails: list[Any] = []
        self.system_agents = SystemAgents(self)  # the admin agents of this runtime's procs (spawned on first use)
        self.admin: AdminEndpoint | None = None  # the client's admin endpoint (start_client_runtime)

    def __repr__(self) -> str:
        return f"<Runtime {self.name!r} addr={self.router.addr!r} children={len(self.procs.children)} closed={self._closed}>"

    def this_proc_mesh(self) -> ProcMesh:
        """A one-point ProcMesh for this very process (``this_proc()``)."""
        if self._this_proc is None:
            self._this_proc = ProcMesh([self.router.addr], Shape([], 0, [], []), None, owned=False)
        return self._this_proc

    # -- actors --------------------------------------------------------------------------------
    def spawn_actors(
        self,
        name: str,
        cls: type,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        addrs: list[str],
        extent: Extent,
        owner: Any,
    ) -> MeshRef:
        """Ask each process in ``addrs`` (one entry per spawn rank) to create its actors.

        Returns:
            The new mesh's reference, already registered with its owner's supervisor record.
        """
        mesh_id = f"{name}-{uuid.uuid4().hex[:10]}"
        ref = MeshRef(mesh_id, name, tuple(addrs), Shape(list(extent.labels), 0, list(extent.sizes)), cls, self.router.addr)
        self.supervisor.register(ref, owner)
        by_addr: dict[str, list[int]] = {}
        for r, a in enumerate(addrs):
            by_addr.setdefault(a, []).append(r)
        me = self.router.addr
        creator = current_creator()
        for a, ranks in by_addr.items():
            if a == me:
                self.router.call_on_loop(self.host.spawn_local, mesh_id, name, cls, args, kwargs, ranks, extent, me, creator)
                continue
            payload, bufs = pickle_spawn(mesh_id, name, cls, args, kwargs, ranks, extent, me, creator)
            self.router.send_control(a, ControlOp.SPAWN, actor=mesh_id, payload=payload, bufs=bufs)
        return ref

    def actors_initialized(self, ref: MeshRef, shape: Shape) -> Future[None]:
        """A future that completes when every actor of ``shape`` ran ``__init__`` (see
        ``ActorMesh.initialized``)."""
        probe = ActorMesh(ref, shape)._invoke(_INIT_SPEC, "call", (), {})
        out: Future[None] = Future()

        def done(f: Future[Any]) -> None:
            exc = f.exception(0)
            if exc is not None:
                out.set_exception(exc)
            else:
                out.set_result(None)

        probe.add_done_callback(done)
        return out

    def stop_actor_mesh(self, ref: MeshRef) -> Future[None]:
        """Stop every actor of a spawn; the future completes when all have stopped."""
        futures: list[Future[Any]] = []
        for a in sorted(set(ref.addrs)):
            if self.router.dead_reason(a):
                continue
            sink = OneSink(self.router, PICKLE_CODEC, {a: {0}})
            try:
                self.router.send_control(a, ControlOp.STOP_MESH, actor=ref.mesh_id, reply_port=sink.port)
            except Exception:
                self.router.close_port(sink.port)
                continue
            futures.append(sink.future)
        self.supervisor.mark_stopped(ref.mesh_id)
        return _all(futures)

    # -- procs ---------------------------------------------------------------------------------
    def procs_ready(self, addrs: list[str]) -> Future[None]:
        """A future that completes when every proc in ``addrs`` answered (``ProcMesh.initialized``)."""
        sink = ValueMeshSink(self.router, PICKLE_CODEC, {a: {i} for i, a in enumerate(addrs)}, Shape(["procs"], 0, [len(addrs)]))
        for i, a in enumerate(addrs):
            try:
                payload, _ = dumps(i)
                self.router.send_control(a, ControlOp.PING, payload=payload, reply_port=sink.port)
            except Exception as exc:
                sink.peer_lost(a, str(exc))
        out: Future[None] = Future()
        sink.future.add_done_callback(lambda f: out.set_exception(e) if (e := f.exception(0)) else out.set_result(None))
        return out

    def _on_ping(self, env: Any, bufs: list[memoryview]) -> None:
        if env.replyAddr:
            try:
                pos = int(PICKLE_CODEC.decode_result(memoryview(env.payload), []))
            except Exception:
                pos = 0
            self.host.send_part(env.replyAddr, env.replyPort, pos, False, dumps(None)[0], [], True)

    def stop_processes(self, addrs: list[str], timeout_s: float | None = None) -> Future[None]:
        """Ask procs to exit (actors run ``__cleanup__``), then kill what is left after
        ``timeout_s`` (default: the configured ``proc_stop_timeout_s``). The future completes
        when every one has exited."""
        t = self.settings.proc_stop_timeout_s if timeout_s is None else timeout_s
        remote = [a for a in addrs if self.remote.owns(a)]
        if not remote:
            return self.procs.stop(addrs, t, self.supervisor.expect_exit)
        local = [a for a in addrs if not self.remote.owns(a)]
        return _all([self.procs.stop(local, t, self.supervisor.expect_exit), self.remote.stop(remote, t)])

    def _hung(self, addr: str, reason: str) -> None:
        """A child stopped sending heartbeats: it has been reported failed; make sure it is gone."""
        h = self.procs.children.get(addr)
        if h is not None and not h.exited.is_set():
            try:
                os.kill(h.pid, 9)
            except ProcessLookupError:
                pass
        elif self.remote.owns(addr):
            self.remote.kill([addr])  # its agent SIGKILLs it

    # -- failures ----------------------------------------------------------------------------------
    def _unhandled(self, failure: MeshFailure) -> None:
        """At the root: a failure nobody handled goes to ``monarch.actor.unhandled_fault_hook``."""
        try:
            fault_hooks.unhandled(failure)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
            self.fail_process(code)
        except Exception:
            log.exception("unhandled_fault_hook raised")

    def fail_process(self, status: int) -> None:
        """End this client with ``status`` once every proc is stopped (any thread).

        Also when the main thread is already leaving: the exit handler sees :attr:`exit_status`
        and exits with it instead of 0.
        """
        self.exit_status = status

        def leave() -> None:
            try:
                self.shutdown()
                # the user's atexit handlers, as a normal exit runs them (ours would exit first)
                atexit.unregister(_at_exit)
                atexit._run_exitfuncs()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(status)

        threading.Thread(target=leave, name="monarch fault exit", daemon=True).start()

    def _proc_fails(self, cause: str) -> None:
        for cb in list(self.on_proc_fails):
            cb(cause)

    # -- shutdown --------------------------------------------------------------------------------
    def shutdown(self, timeout_s: float = 3.0) -> None:
        """Stop every owned proc and the event loop; idempotent, and a second caller waits for
        the first to finish (bounded by ``timeout_s`` + 10 s). Runs at interpreter exit."""
        if self._closed:
            self._shutdown_done.wait(timeout_s + 10.0)
            return
        self._closed = True
        try:
            if self.admin is not None:
                self.admin.close()
            self.remote.close(timeout_s)
            alive = self.procs.alive()
            if alive:
                try:
                    self.stop_processes(alive, timeout_s).get(timeout_s + 5.0)
                except Exception:
                    self.procs.kill_all()
            if self.loop_thread is not None and self.loop.is_running():
                done = threading.Event()

                def stop() -> None:
                    self.router.close()
                    self.loop.stop()
                    done.set()

                try:
                    self.loop.call_soon_threadsafe(stop)
                    done.wait(2.0)
                    self.loop_thread.join(2.0)
                except RuntimeError:
                    pass
            self.procs.close()
            if self.owns_dir:
                shutil.rmtree(self.runtime_dir, ignore_errors=True)
        finally:
            self._shutdown_done.set()


def _socket_transport(
    loop: asyncio.AbstractEventLoop, token: bytes | None, settings: TransportSettings, tls: TlsConfig | None
) -> TransportFactory:
    def make(on_frame: FrameHandler, on_close: CloseHandler) -> Transport:
        return SocketTransport(loop, on_frame, on_close, token=token, settings=settings, tls=tls)

    return make


def _response_port(addr: str, port: int, rank: int, codec: Codec | None) -> Port[Any]:
    return Port(addr, port, rank, codec, once=True)


def _all(futures: list[Future[Any]]) -> Future[None]:
    out: Future[None] = Future()
    if not futures:
        out.set_result(None)
        return out
    remaining = [len(futures)]
    lock = threading.Lock()

    def one(f: Future[Any]) -> None:
        with lock:
            remaining[0] -= 1
            last = remaining[0] == 0
        if last:
            out.set_result(None)

    for f in futures:
        f.add_done_callback(one)
    return out


def new_loop() -> asyncio.AbstractEventLoop:
    """A new event loop: uvloop's when installed."""
    try:
        import uvloop
    except ImportError:  # uvloop is optional off Linux
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def start_client_runtime() -> Runtime:
    """Start the root client's runtime: a private runtime folder, the loop on a daemon thread.

    Raises:
        SupervisionError: the loop thread did not come up within 10 s.
        ConfigError: Monarch's ``default_transport`` names a transport this runtime lacks.
    """
    # where to listen, before anything starts (a default_transport it cannot serve: ConfigError)
    chosen = requested_listen() or default_transport_listen()
    # launch the fork server first: its imports run while this process imports the settings
    # (the settings may still turn it off: then the runtime closes it)
    off = os.environ.get(GUARD_ENV) or os.environ.get("MONARCH_ZYGOTE", "").strip().lower() in ("0", "false", "no", "off")
    fork_server = None if off else _launch_fork_server()
    settings, token = settings_from_config()
    if token is None:
        # this job's own token. It also goes into this process's environment, so that any
        # process started from here by other means (multiprocessing's spawn, a subprocess that
        # unpickles a mesh) joins the job, as it does under a configured token; the runtime
        # folder's mode 0700 already limits who can reach the sockets to this user
        token = secrets.token_hex(32).encode()
        os.environ["MONARCH_CLUSTER_TOKEN"] = token.decode()
    _remove_stale_runtime_dirs()
    runtime_dir = tempfile.mkdtemp(prefix=f"monarch-{os.getpid()}-")
    os.chmod(runtime_dir, 0o700)
    loop = new_loop()
    # enable_transport() or attach_to_workers() asked for TCP: agents' procs must reach us; else
    # Monarch's default_transport knob (checked above, before anything started)
    listen = chosen or "unix:" + os.path.join(runtime_dir, "client.sock")
    ready = threading.Event()
    holder: list[Runtime] = []
    errors: list[BaseException] = []

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop_thread_marker.active = True
        try:
            rt = Runtime(
                loop, listen, name="client", runtime_dir=runtime_dir, owns_dir=True, token=token,
                settings=settings, fork_server=fork_server,
            )
            holder.append(rt)
        except BaseException as exc:
            errors.append(exc)
            ready.set()
            return
        ready.set()
        try:
            loop.run_forever()
        finally:
            loop.close()

    thread = threading.Thread(target=run, name="monarch client loop", daemon=True)
    thread.start()
    ready.wait(10.0)
    if errors:
        shutil.rmtree(runtime_dir, ignore_errors=True)
        raise errors[0]
    if not holder:
        raise SupervisionError("the client runtime did not start within 10 s")
    rt = holder[0]
    rt.loop_thread = thread
    if settings.admin:
        try:
            rt.admin = AdminEndpoint(rt, rt.system_agents)
        except OSError as exc:
            log.warning("no admin endpoint (monarch status/exec/env will not find this client): %s", exc)
    install_log_prefix(log_prefix_enabled(settings), "<root>")
    atexit.register(_at_exit, rt)
    return rt


def system_agents() -> SystemAgents:
    """This process's admin agents (the runtime is started if it was not): what
    ``monarch.tools`` uses to reach every proc's system actor."""
    return current.current_runtime().system_agents


def _launch_fork_server() -> ZygoteClient | None:
    try:
        return ZygoteClient.start()
    except Exception as exc:
        log.warning("no fork server, procs start from scratch: %s", exc)
        return None


def _remove_stale_runtime_dirs() -> None:
    """Remove the runtime folders of clients of this user that died without cleaning up
    (SIGKILL): ``monarch-<pid>-*`` whose pid no longer runs."""
    base = tempfile.gettempdir()
    try:
        names = os.listdir(base)
    except OSError:
        return
    uid = os.getuid()
    for name in names:
        parts = name.split("-")
        if len(parts) < 3 or parts[0] != "monarch" or not parts[1].isdigit():
            continue
        path = os.path.join(base, name)
        try:
            if os.stat(path).st_uid != uid:
                continue
            os.kill(int(parts[1]), 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except OSError:
            continue


def _at_exit(rt: Runtime) -> None:
    rt.shutdown()
    if rt.exit_status is not None:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(rt.exit_status)


current.install_starter(start_client_runtime)
