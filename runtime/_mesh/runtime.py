"""The process-global runtime: event loop, router, actor host, and the OS processes it owns.

In the client the event loop runs on a daemon thread started on first use; in a proc it is the
main thread (see ``proc_main``). Procs are OS processes started with their listening socket
already bound by the parent, so the parent can queue messages before the child has even started
(spawning never blocks); the parent watches each child through a pidfd (event-driven exit
detection, with the exit status) and through connection loss.
"""

from __future__ import annotations

import asyncio
import atexit
import itertools
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from .._core.errors import SupervisionError
from .._core.future import Future, loop_thread_marker
from .._core.shape import Extent, Shape
from .._transport.frame import Envelope
from .._transport.pickle_codec import PICKLE_CODEC, dumps
from .context import _current
from .hosting import ActorHost, pickle_spawn
from .port import OneSink
from .router import Router

__all__ = ["ProcHandle", "Runtime", "get_runtime", "proc_default_context"]

log = logging.getLogger("monarch.runtime")

_runtime: Runtime | None = None
_runtime_lock = threading.Lock()


@dataclass
class ProcHandle:
    """An OS process this runtime started."""

    addr: str
    pid: int
    name: str
    popen: subprocess.Popen[bytes] | None = None
    pidfd: int = -1
    exit_reason: str | None = None
    exited: threading.Event = field(default_factory=threading.Event)


def describe_status(status: int) -> str:
    """``killed by signal 9 (SIGKILL)`` / ``exited with status 1`` from a wait status."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = "?"
        return f"killed by signal {sig} ({name})"
    if os.WIFEXITED(status):
        return f"exited with status {os.WEXITSTATUS(status)}"
    return f"ended (wait status {status})"


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop

        return uvloop.new_event_loop()
    except ImportError:  # uvloop is optional off Linux
        return asyncio.new_event_loop()


class Runtime:
    """One per process. Use :func:`get_runtime`."""

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
    ) -> None:
        self.loop = loop
        self.name = name
        self.runtime_dir = runtime_dir
        self.owns_dir = owns_dir
        self.token = token
        self.router = Router(loop, listen, token=token, name=name)
        self.host = ActorHost(self.router, self.this_proc_mesh)
        self.children: dict[str, ProcHandle] = {}
        self._names = itertools.count()
        self._this_proc: Any = None
        self._closed = False
        self.loop_thread: threading.Thread | None = None
        self._zygote: Any = None
        self._zygote_ready = threading.Event()
        from .supervision import Supervisor

        self.supervisor = Supervisor(self, parent_addr)

    # -- naming --------------------------------------------------------------------------------
    def sender_name(self) -> str:
        """A readable name of the sender for envelopes: the running actor's id, else this process."""
        ctx = _current.get()
        return ctx.actor_instance.actor_id if ctx is not None else self.name

    def unusable(self, ref: Any, ranks: list[int]) -> str | None:
        """Why calls to ``ranks`` of the mesh ``ref`` cannot be made (failed, stopped), or None."""
        return self.supervisor.unusable(ref, ranks)

    def this_proc_mesh(self) -> Any:
        """A one-point ProcMesh for this very process (``this_proc()``)."""
        if self._this_proc is None:
            from .proc_mesh import ProcMesh

            self._this_proc = ProcMesh([self.router.addr], Shape([], 0, [], []), None, owned=False)
        return self._this_proc

    # -- processes ---------------------------------------------------------------------------
    def spawn_processes(self, n: int, name: str, env: dict[str, str] | None = None) -> list[ProcHandle]:
        """Start ``n`` proc processes (non-blocking: they are reachable at once).

        Raises:
            OSError: the OS refused to start a process.
        """
        handles = []
        child_env = dict(os.environ)
        child_env.update(env or {})
        child_env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        child_env["MONARCH_RUNTIME_DIR"] = self.runtime_dir
        if self.token is not None:
            child_env["MONARCH_CLUSTER_TOKEN"] = self.token.decode()
        for _ in range(n):
            k = next(self._names)
            path = os.path.join(self.runtime_dir, f"{os.getpid()}-{k}.sock")
            lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            lsock.bind(path)
            lsock.listen(512)
            addr = "unix:" + path
            cmd = [
                sys.executable,
                "-m",
                "monarch._mesh.proc_main",
                "--fd",
                str(lsock.fileno()),
                "--owner",
                self.router.addr,
                "--name",
                f"{name}/{k}",
            ]
            zygote = self._get_zygote()
            popen: subprocess.Popen[bytes] | None = None
            if zygote is not None:
                try:
                    pid = zygote.spawn([a if a != str(lsock.fileno()) else "{fd}" for a in cmd[3:]], child_env, os.getcwd(), lsock.fileno())
                except OSError:
                    zygote = None
            if zygote is None:
                popen = subprocess.Popen(cmd, pass_fds=[lsock.fileno()], env=child_env, cwd=os.getcwd())
                pid = popen.pid
            h = ProcHandle(addr, pid, f"{name}/{k}", popen)
            # connect before closing our copy: the connection waits in the child's backlog
            csock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            csock.connect(path)
            lsock.close()
            self.children[addr] = h
            self.router.adopt(addr, csock)
            try:
                h.pidfd = os.pidfd_open(pid)
                self.router.call_on_loop(self._watch, h)
            except OSError:
                h.pidfd = -1
            handles.append(h)
        return handles

    def start_zygote(self) -> None:
        """Start the fork server in the background (root client only; MONARCH_ZYGOTE=0 disables)."""
        if os.environ.get("MONARCH_ZYGOTE", "1") == "0" or self.name != "client":
            self._zygote_ready.set()
            return

        def start() -> None:
            try:
                from .zygote import ZygoteClient

                self._zygote = ZygoteClient(lambda pid, status: None)
            except Exception as exc:
                log.warning("no zygote, procs start from scratch: %s", exc)
            finally:
                self._zygote_ready.set()

        threading.Thread(target=start, name="monarch zygote start", daemon=True).start()

    def _get_zygote(self) -> Any:
        if self.name != "client":
            return None  # procs spawn their own procs directly; only the root client has a zygote
        self._zygote_ready.wait(10.0)
        return self._zygote

    def _watch(self, h: ProcHandle) -> None:
        self.router.watched.add(h.addr)
        self.loop.add_reader(h.pidfd, self._child_exited, h)

    def _child_exited(self, h: ProcHandle) -> None:
        try:
            self.loop.remove_reader(h.pidfd)
        except (OSError, ValueError):
            pass
        status = None
        if h.popen is not None:
            try:
                _, st = os.waitpid(h.pid, os.WNOHANG)
                if _:
                    status = st
                    h.popen.returncode = os.waitstatus_to_exitcode(st)
            except ChildProcessError:
                pass
        elif self._zygote is not None:
            # not our child: the zygote reaps it and reports the status
            deadline = time.monotonic() + 0.05
            while h.pid not in self._zygote.exits and time.monotonic() < deadline:
                time.sleep(0.001)
            status = self._zygote.exits.pop(h.pid, None)
        os.close(h.pidfd)
        h.pidfd = -1
        reason = describe_status(status) if status is not None else "exited"
        h.exit_reason = f"proc {h.name} (pid {h.pid}) {reason}"
        h.exited.set()
        self.router.mark_dead(h.addr, h.exit_reason)

    # -- actors --------------------------------------------------------------------------------
    def spawn_actors(
        self,
        name: str,
        cls: type,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        addrs: list[str],
        extent: Extent,
    ) -> str:
        """Ask each process in ``addrs`` (one entry per spawn rank) to create its actors."""
        mesh_id = f"{name}-{uuid.uuid4().hex[:10]}"
        by_addr: dict[str, list[int]] = {}
        for r, a in enumerate(addrs):
            by_addr.setdefault(a, []).append(r)
        owner = self.router.addr
        from .supervision import current_owner

        self.supervisor.register(mesh_id, name, addrs, current_owner())
        for a, ranks in by_addr.items():
            if a == self.router.addr:
                self.router.call_on_loop(
                    self.host.spawn_local, mesh_id, name, cls, args, kwargs, ranks, extent, owner
                )
                continue
            payload, bufs = pickle_spawn(mesh_id, name, cls, args, kwargs, ranks, extent, owner)
            env = Envelope.new_message()
            env.kind = "control"
            env.endpoint = "spawn"
            env.actor = mesh_id
            env.payload = payload
            self.router.send(a, env, bufs)
        return mesh_id

    def stop_actor_mesh(self, ref: Any) -> Future[None]:
        """Stop every actor of a spawn; the future completes when all have stopped."""
        addrs = sorted(set(ref.addrs))
        futures: list[Future[Any]] = []
        for a in addrs:
            if self.router.dead_reason(a):
                continue
            sink = OneSink(self.router, PICKLE_CODEC, {a: {0}})
            env = Envelope.new_message()
            env.kind = "control"
            env.endpoint = "stop_mesh"
            env.actor = ref.mesh_id
            env.replyAddr = self.router.addr
            env.replyPort = sink.port
            try:
                self.router.send(a, env, [])
            except Exception:
                self.router.close_port(sink.port)
                continue
            futures.append(sink.future)
        self.supervisor.mark_stopped(ref.mesh_id)
        return _all(futures)

    def stop_processes(self, addrs: list[str], timeout_s: float = 5.0) -> Future[None]:
        """Ask procs to exit (actors run ``__cleanup__``), then kill what is left after
        ``timeout_s``. The future completes when every one has exited."""
        handles = [self.children[a] for a in addrs if a in self.children]
        self.supervisor.expect_exit(addrs)
        for h in handles:
            if h.exited.is_set():
                continue
            env = Envelope.new_message()
            env.kind = "control"
            env.endpoint = "exit"
            try:
                self.router.send(h.addr, env, [])
            except Exception:
                pass
        fut: Future[None] = Future()

        def waiter() -> None:
            deadline = time.monotonic() + timeout_s
            for h in handles:
                if not h.exited.wait(max(0.0, deadline - time.monotonic())):
                    _kill(h)
                    h.exited.wait(2.0)
                if h.popen is not None:
                    try:
                        h.popen.wait(timeout=2.0)
                    except subprocess.TimeoutExpired:
                        _kill(h)
                elif not h.exited.is_set():
                    _kill(h)
            fut.set_result(None)

        threading.Thread(target=waiter, name="monarch proc stopper", daemon=True).start()
        return fut

    # -- shutdown --------------------------------------------------------------------------------
    def shutdown(self, timeout_s: float = 3.0) -> None:
        """Stop every owned proc and the event loop (idempotent; runs at interpreter exit)."""
        if self._closed:
            return
        self._closed = True
        alive = [a for a, h in self.children.items() if not h.exited.is_set()]
        if alive:
            try:
                self.stop_processes(alive, timeout_s).get(timeout_s + 5.0)
            except Exception:
                for a in alive:
                    _kill(self.children[a])
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
        if self._zygote is not None:
            self._zygote.close()
        if self.owns_dir:
            shutil.rmtree(self.runtime_dir, ignore_errors=True)


def _kill(h: ProcHandle) -> None:
    try:
        os.kill(h.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


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


def _token_from_env() -> bytes | None:
    tok = os.environ.get("MONARCH_CLUSTER_TOKEN")
    return tok.encode() if tok else None


def get_runtime() -> Runtime:
    """This process's runtime; in the client it is created (with its loop thread) on first use."""
    global _runtime
    rt = _runtime
    if rt is not None:
        return rt
    with _runtime_lock:
        if _runtime is None:
            _runtime = _start_client_runtime()
        return _runtime


def set_runtime(rt: Runtime) -> None:
    global _runtime
    _runtime = rt


def _start_client_runtime() -> Runtime:
    runtime_dir = tempfile.mkdtemp(prefix="monarch-")
    os.chmod(runtime_dir, 0o700)
    loop = _new_loop()
    path = os.path.join(runtime_dir, "client.sock")
    ready = threading.Event()
    holder: list[Runtime] = []
    errors: list[BaseException] = []

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop_thread_marker.active = True
        try:
            rt = Runtime(loop, "unix:" + path, name="client", runtime_dir=runtime_dir, owns_dir=True, token=_token_from_env())
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
        raise errors[0]
    if not holder:
        raise SupervisionError("the client runtime did not start within 10 s")
    rt = holder[0]
    rt.loop_thread = thread
    rt.start_zygote()
    atexit.register(rt.shutdown)
    return rt


def proc_default_context() -> Any:
    """In a proc outside any handler (e.g. a background thread), the proc's own context."""
    return None


__all__ += ["describe_status", "dumps", "set_runtime"]
