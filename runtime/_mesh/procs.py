"""The OS processes a runtime starts: spawning procs, watching them die, stopping them.

Procs are started with their listening socket already bound by the parent, and the parent
connects to it before the child runs, so messages can be queued before the child has even
started (spawning never blocks). In the root client, procs are forked from a pre-imported fork
server (:mod:`monarch._mesh.zygote`) launched when the client runtime starts (or, failing that, at the
first spawn); a spawn of N procs sends all N fork requests before it awaits the first answer.
Elsewhere, and where the fork server refuses a proc, they are started with a fresh interpreter. Each child is watched through a pidfd on the event loop (event-driven
exit detection); its exit status names the cause (``Killed(sig=9): killed by signal 9 (SIGKILL)``) and goes to
the router, the one source of truth for which peers are alive.
"""

from __future__ import annotations

import collections
import itertools
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .._core.future import Future
from .._transport.messages import ControlOp, Kind
from . import logs
from .router import Router
from .zygote import GUARD_ENV, ZygoteClient, ZygoteRefused

__all__ = ["ProcHandle", "ProcManager", "describe_status"]

_SUN_PATH_MAX = 108  # sizeof(sockaddr_un.sun_path) on Linux, the terminating NUL included
# exited children remembered for reports; older ones are forgotten (their addresses stay dead)
_EXITED_KEPT = 4096

log = logging.getLogger("monarch.procs")


@dataclass
class ProcHandle:
    """An OS process this runtime started."""

    addr: str
    pid: int
    name: str
    popen: subprocess.Popen[bytes] | None = None
    pidfd: int = -1
    exit_reason: str | None = None
    log_path: str | None = None
    exited: threading.Event = field(default_factory=threading.Event)

    def __repr__(self) -> str:
        state = self.exit_reason or "running"
        return f"<ProcHandle {self.name} pid={self.pid} {state}>"


@dataclass
class _Pending:
    """A proc being started by :meth:`ProcManager.spawn`: its sockets and fork request."""

    name: str
    path: str
    log_path: str
    argv: list[str]
    env: dict[str, str]
    lsock: socket.socket | None = None  # its listening socket (the child gets a copy)
    csock: socket.socket | None = None  # our connection to it (its owner link)
    rid: int | None = None  # its fork server request, until answered or abandoned


def _config_preload() -> tuple[str, ...]:
    """What the fork server should import before forking this client's procs.

    A client that has imported ``monarch.config`` resolved its settings from it and passes them
    to its procs (``RuntimeSettings.child_env``); a proc whose environment carries settings
    imports ``monarch.config`` at start (pydantic, ~0.1 s of CPU). The fork server then imports
    it once, before the first of them forks, rather than every proc importing it itself.
    """
    return ("monarch.config",) if "monarch.config" in sys.modules else ()


def describe_status(status: int) -> str:
    """How a proc ended, from a wait status, in Monarch's words with ours added.

    Monarch's phrase first, then ours: ``Killed(sig=9): killed by signal 9 (SIGKILL)``,
    ``exited with non-zero code 1: exited with status 1``, ``exited with status 0``.
    """
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = "?"
        return f"Killed(sig={sig}): killed by signal {sig} ({name})"
    if os.WIFEXITED(status):
        code = os.WEXITSTATUS(status)
        return (
            f"exited with non-zero code {code}: exited with status {code}"
            if code
            else "exited with status 0"
        )
    return f"ended (wait status {status})"


class ProcManager:
    """Starts, watches and stops the procs of one runtime.

    Args:
        router: this process's router (connections to the children, liveness).
        runtime_dir: the job's private folder for Unix sockets.
        child_env: environment variables every child gets on top of this process's (the job's
            configuration, the runtime folder, the cluster token).
        use_fork_server: fork children from a pre-imported fork server (root client only).
        fork_server: one already launched (so its imports overlap the runtime's start); closed
            when ``use_fork_server`` is False.
    """

    def __init__(
        self,
        router: Router,
        *,
        runtime_dir: str,
        child_env: dict[str, str],
        use_fork_server: bool,
        fork_server: ZygoteClient | None = None,
    ) -> None:
        self.router = router
        self.runtime_dir = runtime_dir
        self.child_env = dict(child_env)
        self.use_fork_server = use_fork_server
        self.children: dict[str, ProcHandle] = {}
        self._names = itertools.count()
        self._zygote: ZygoteClient | None = None
        if fork_server is not None:
            if use_fork_server:
                fork_server.set_callbacks(self._fork_server_exit, self._fork_server_lost)
                self._zygote = fork_server
            else:
                fork_server.close()
        self._zygote_failed = False
        self._zygote_lock = threading.Lock()
        self._by_pid: dict[int, ProcHandle] = {}  # children forked by the fork server
        self._exited: collections.deque[str] = collections.deque()  # exit order, for pruning

    def __repr__(self) -> str:
        alive = sum(1 for h in self.children.values() if not h.exited.is_set())
        return f"<ProcManager children={len(self.children)} alive={alive}>"

    def pid_of(self, addr: str) -> int:
        """The pid of the child at ``addr`` (0 when it is not our child)."""
        h = self.children.get(addr)
        return h.pid if h is not None else 0

    # -- spawning ------------------------------------------------------------------------------
    def spawn(
        self,
        n: int,
        name: str,
        env: dict[str, str] | None = None,
        *,
        python_executable: str | None = None,
    ) -> list[ProcHandle]:
        """Start ``n`` procs (non-blocking: they are reachable at once).

        Args:
            n: how many OS processes.
            name: prefix of their names (``name/0``, ``name/1``, ...).
            env: extra environment variables for these procs.
            python_executable: the interpreter to start them with (from scratch, not from the
                fork server, which runs this process's interpreter); None: this one.

        Raises:
            OSError: the OS refused to start a process.
        """
        child_env = dict(os.environ)
        child_env.update(self.child_env)
        child_env.update(env or {})
        child_env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        if python_executable is not None:
            child_env["MONARCH_PYTHON_EXECUTABLE"] = python_executable
        if logs.ENV_SINK not in child_env:  # the root client: its procs' output comes here
            child_env[logs.ENV_SINK] = logs.client_sink(self.router).address
        try:
            rank_base = int(child_env.pop(logs.ENV_RANK_BASE, "0"))
        except ValueError:
            rank_base = 0
        host = socket.gethostname()
        zygote = self._fork_server() if python_executable is None else None
        preload = _config_preload()
        pending: list[_Pending] = []
        handles: list[ProcHandle] = []
        try:
            # every proc's socket first, and every fork request sent before any answer is
            # awaited: the fork server forks while this thread prepares the next request
            for i in range(n):
                k = next(self._names)
                proc_env = dict(child_env)
                proc_env[logs.ENV_FILE] = log_path = logs.new_log_path(f"{name}/{k}")
                proc_env[logs.ENV_RANK] = str(rank_base + i)
                path = os.path.join(self.runtime_dir, f"{os.getpid()}-{k}.sock")
                if len(os.fsencode(path)) >= _SUN_PATH_MAX:
                    raise OSError(
                        f"the proc socket path {path!r} is {len(os.fsencode(path))} bytes, longer than a Unix "
                        f"socket allows ({_SUN_PATH_MAX - 1}): set TMPDIR to a shorter folder"
                    )
                argv = ["--fd", "{fd}", "--owner", self.router.addr, "--name", f"{name}/{k}"]
                p = _Pending(f"{name}/{k}", path, log_path, argv, proc_env)
                pending.append(p)
                p.lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                p.lsock.bind(path)
                p.lsock.listen(512)
                # connect before the child exists: the connection waits in the backlog the child
                # inherits, so it is the first the child accepts (the child's owner link)
                p.csock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                p.csock.connect(path)
                if zygote is not None and not self._zygote_failed:
                    p.rid = self._submit(zygote, p, preload)
            for p in pending:
                assert p.lsock is not None and p.csock is not None
                pid, popen = self._collect(zygote, p, python_executable)
                h = ProcHandle("unix:" + p.path, pid, p.name, popen, log_path=p.log_path)
                logs.note_proc(host, pid, h.addr)
                p.lsock.close()  # the child has its own copy
                p.lsock = None
                self.children[h.addr] = h
                self.router.adopt(h.addr, p.csock)
                p.csock = None
                if popen is not None:
                    # our own child: its pidfd says when it ends (the fork server reports the
                    # exits of its children itself, see _fork_server_exit)
                    try:
                        h.pidfd = os.pidfd_open(pid)
                    except OSError:
                        h.pidfd = -1
                else:
                    self._by_pid[pid] = h
                self.router.call_on_loop(self._watch, h)
                if popen is None and zygote is not None:
                    status = zygote.exit_status(pid)
                    if status is not None and self._by_pid.pop(pid, None) is not None:
                        # it exited before it was registered: the report found no handle
                        self.router.call_on_loop(self._finish_exit, h, status)
                handles.append(h)
        finally:
            for p in pending:  # those not started (an error above): nothing of theirs survives
                if p.rid is not None and zygote is not None:
                    zygote.abandon(p.rid)
                for s in (p.lsock, p.csock):
                    if s is not None:
                        s.close()
        return handles

    def _submit(self, zygote: ZygoteClient, p: _Pending, preload: tuple[str, ...]) -> int | None:
        """Send ``p``'s fork request; None if the fork server failed (start it from scratch)."""
        assert p.lsock is not None
        try:
            return zygote.submit(p.argv, p.env, os.getcwd(), p.lsock.fileno(), preload=preload)
        except OSError as exc:
            log.warning("fork server failed, starting procs from scratch: %s", exc)
            self._zygote_failed = True
            return None

    def _collect(
        self, zygote: ZygoteClient | None, p: _Pending, python_executable: str | None
    ) -> tuple[int, subprocess.Popen[bytes] | None]:
        """``p``'s pid: the fork server's answer to its request, else a proc started from scratch."""
        assert p.lsock is not None
        rid, p.rid = p.rid, None
        if rid is not None and zygote is not None:
            if self._zygote_failed:  # an earlier answer failed: do not wait on this one too
                zygote.abandon(rid)
            else:
                try:
                    return zygote.result(rid), None
                except ZygoteRefused as exc:
                    log.info("starting this proc from scratch: %s", exc)
                except OSError as exc:
                    log.warning("fork server failed, starting procs from scratch: %s", exc)
                    self._zygote_failed = True
        fd = p.lsock.fileno()
        cmd = [
            python_executable or sys.executable,
            "-m",
            "monarch._mesh.proc_main",
            *[a if a != "{fd}" else str(fd) for a in p.argv],
        ]
        popen = subprocess.Popen(cmd, pass_fds=[fd], env=p.env, cwd=os.getcwd())
        return popen.pid, popen

    def _fork_server(self) -> ZygoteClient | None:
        """The fork server, started on first use (never at import)."""
        if not self.use_fork_server or self._zygote_failed:
            return None
        with self._zygote_lock:
            if self._zygote is None and not self._zygote_failed:
                try:
                    self._zygote = ZygoteClient.start(
                        on_exit=self._fork_server_exit, on_lost=self._fork_server_lost
                    )
                except Exception as exc:
                    (log.debug if os.environ.get(GUARD_ENV) else log.warning)(
                        "no fork server, procs start from scratch: %s", exc
                    )
                    self._zygote_failed = True
            return self._zygote

    # -- exits -----------------------------------------------------------------------------------
    def _watch(self, h: ProcHandle) -> None:
        self.router.watch(h.addr, lambda: proc_state(h.pid))
        if h.pidfd >= 0:
            self.router.loop.add_reader(h.pidfd, self._child_exited, h)

    def _fork_server_exit(self, pid: int, status: int) -> None:
        """The fork server reaped ``pid`` (its reader thread)."""
        h = self._by_pid.pop(pid, None)
        if h is not None:
            self.router.call_on_loop(self._finish_exit, h, status)

    def _fork_server_lost(self, pids: list[int]) -> None:
        """The fork server died before reporting these children (they die with it)."""
        for pid in pids:
            h = self._by_pid.pop(pid, None)
            if h is not None:
                self.router.call_on_loop(self._finish_exit, h, None)

    def _child_exited(self, h: ProcHandle) -> None:
        """The pidfd of our child ``h`` became readable: it ended (loop thread)."""
        try:
            self.router.loop.remove_reader(h.pidfd)
        except (OSError, ValueError):
            pass
        os.close(h.pidfd)
        h.pidfd = -1
        status = None
        if h.popen is not None:
            try:
                got, st = os.waitpid(h.pid, os.WNOHANG)
                if got:
                    status = st
                    h.popen.returncode = os.waitstatus_to_exitcode(st)
            except ChildProcessError:
                pass
        self._finish_exit(h, status)

    def _finish_exit(self, h: ProcHandle, status: int | None) -> None:
        if h.exited.is_set():
            return
        self._exited.append(h.addr)
        while len(self._exited) > _EXITED_KEPT:
            self.children.pop(self._exited.popleft(), None)
        reason = describe_status(status) if status is not None else "exited"
        failed = status is None or not (os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0)
        note = logs.failure_note(h.log_path) if failed else ""
        if not failed:
            logs.discard_log(h.log_path)
        h.exit_reason = f"{reason} (proc {h.name}, pid {h.pid}{note})"
        h.exited.set()
        self.router.mark_dead(h.addr, h.exit_reason)

    # -- stopping ----------------------------------------------------------------------------------
    def stop(
        self, addrs: list[str], timeout_s: float, on_expected_exit: Callable[[list[str]], None]
    ) -> Future[None]:
        """Ask procs to exit (their actors run ``__cleanup__``), then kill what is left after
        ``timeout_s`` seconds. The future completes when every one has exited.

        Args:
            addrs: the procs to stop (addresses not started here are ignored).
            timeout_s: grace period before SIGKILL, in seconds.
            on_expected_exit: told first which procs are about to exit on purpose.
        """
        handles = [self.children[a] for a in addrs if a in self.children]
        on_expected_exit([h.addr for h in handles])
        for h in handles:
            if h.exited.is_set():
                continue
            try:
                self.router.send_control(h.addr, ControlOp.EXIT)
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

        if all(h.exited.is_set() for h in handles):
            fut.set_result(None)
        else:
            threading.Thread(target=waiter, name="monarch proc stopper", daemon=True).start()
        return fut

    def alive(self) -> list[str]:
        """Addresses of the children that have not exited."""
        return [a for a, h in self.children.items() if not h.exited.is_set()]

    def kill_all(self) -> None:
        """SIGKILL every child still running."""
        for h in self.children.values():
            if not h.exited.is_set():
                _kill(h)

    def close(self) -> None:
        """Close the fork server (after the children were stopped)."""
        z, self._zygote = self._zygote, None
        if z is not None:
            z.close()


def proc_state(pid: int) -> str | None:
    """The scheduler state letter of ``pid`` from ``/proc`` (``R``, ``S``, ``D``, ``T`` stopped,
    ``Z`` zombie), or None when the process is gone (a zombie counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    state = stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3].decode()
    return None if state in ("Z", "X", "") else state


def _kill(h: ProcHandle) -> None:
    try:
        os.kill(h.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


__all__ += ["Kind"]
