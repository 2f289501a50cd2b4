"""A pre-imported fork server for proc processes (the "zygote"): its client, in the parent.

Starting a proc with a fresh interpreter costs ~0.2 s of imports; forking a process that has
already imported the runtime costs a few milliseconds. :meth:`ZygoteClient.start` launches one
zygote (a child interpreter running :func:`monarch._mesh.zygote_server.serve`); each
:meth:`ZygoteClient.spawn` (or :meth:`~ZygoteClient.submit`, then :meth:`~ZygoteClient.result`,
to have several requests in flight) sends it the proc's argv, environment, working directory,
``sys.path`` and listening socket (passed with ``SCM_RIGHTS``; the protocol is in
:mod:`monarch._mesh.zygote_wire`), and the zygote forks the proc. The zygote reaps its children
and reports each exit status, so the client can say ``killed by signal 9`` rather than
"connection lost".

:meth:`ZygoteClient.start` refuses to run under ``MONARCH_IN_ZYGOTE`` (set in the zygote and in
everything it forks, before their interpreters start), so a ``sitecustomize`` or ``.pth`` file
that imports monarch cannot chain fork servers. Nothing in this module starts a process at
import. What a forked proc gets and what makes a spawn be refused (:class:`ZygoteRefused`, the
caller then starts that proc from scratch) is described in :mod:`monarch._mesh.zygote_server`.
"""

from __future__ import annotations

import itertools
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable

from .._core.errors import MonarchError
from .zygote_wire import (
    GUARD_ENV,
    K_EXITED,
    K_FAILED,
    K_HELLO,
    K_REFUSED,
    K_SPAWNED,
    MAX_REQUEST_BYTES,
    REPLY,
    STARTUP_ENV,
    FrameReader,
    ProtocolViolation,
    encode_request,
    send_frame,
)

__all__ = ["GUARD_ENV", "PROC_MAIN", "ZygoteClient", "ZygoteError", "ZygoteRefused"]

log = logging.getLogger(__name__)

PROC_MAIN = "monarch._mesh.proc_main:main"
"""The default spawn target: a proc's main function, called with its argv."""


class ZygoteError(MonarchError, OSError):
    """The zygote cannot serve: it refused to start, exited, broke the protocol or timed out."""


class ZygoteRefused(ZygoteError):
    """The zygote cannot fork this proc faithfully; start it from a fresh interpreter instead."""


ExitCallback = Callable[[int, int], None]
LostCallback = Callable[[list[int]], None]


class ZygoteClient:
    """The client side of one zygote: start it, ask it for procs, hear about their exits.

    Thread-safe: ``spawn``, ``submit``, ``result``, ``abandon``, ``exit_status``, ``wait_exit``
    and ``close`` may be called from any thread. Exit notifications come from the client's
    reader thread (named ``monarch zygote``).

    Args:
        on_exit: called as ``on_exit(pid, wait_status)`` exactly once per spawned child whose
            exit the zygote reported, on the reader thread (never on an event loop: hop with
            ``call_soon_threadsafe``). It must not block. ``wait_status`` is the raw ``waitpid``
            status (``os.waitstatus_to_exitcode`` decodes it). An exception it raises is logged
            and ignored. ``None``: no callback.
        on_lost: called once, on the reader thread, with the pids of the children whose exit
            was not reported because the zygote exited first (closed or killed). The kernel
            SIGKILLs the zygote's children as it exits (``PR_SET_PDEATHSIG``), so they are dead
            or about to be. Not called when the zygote had no live children. ``None``: no callback.
        idle_preload: whether the zygote imports ``PRELOAD_IDLE`` in a quiet spell between
            requests (see :mod:`monarch._mesh.zygote_server`); False: only for a request whose
            ``preload`` names them (a host agent: its quiet spells are when clients attach).

    Raises:
        ZygoteError: refused inside a zygote or a process it forked (``MONARCH_IN_ZYGOTE``).
        OSError: the zygote's interpreter could not be started.
    """

    def __init__(
        self,
        on_exit: ExitCallback | None = None,
        on_lost: LostCallback | None = None,
        *,
        idle_preload: bool = True,
    ) -> None:
        if os.environ.get(GUARD_ENV):
            raise ZygoteError(
                f"refusing to start a zygote inside a zygote or a proc it forked ({GUARD_ENV} is set)"
            )
        self._on_exit = on_exit
        self._on_lost = on_lost
        self._cond = threading.Condition()
        self._send_lock = threading.Lock()
        self._ids = itertools.count()
        self._replies: dict[int, tuple[int, int]] = {}
        self._pending: set[int] = set()  # submitted, neither collected nor abandoned
        self._abandoned: set[int] = set()
        self._live: set[int] = set()
        self._ready = False
        self._gone: str | None = None  # why the zygote cannot serve any more
        self._closing = False
        self.exits: dict[int, int] = {}
        """Wait status of each exited child, by pid, until :meth:`forget` (read-only for callers)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        env[GUARD_ENV] = "1"  # before its interpreter starts: sitecustomize/.pth imports see it
        try:
            self.popen = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    "from monarch._mesh.zygote_server import serve; "
                    f"serve({theirs.fileno()}, idle_preload={idle_preload!r})",
                ],
                pass_fds=[theirs.fileno()],
                env=env,
                stdin=subprocess.DEVNULL,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self.sock = ours
        self._reader = threading.Thread(target=self._read, name="monarch zygote", daemon=True)
        self._reader.start()

    @classmethod
    def start(
        cls,
        on_exit: ExitCallback | None = None,
        on_lost: LostCallback | None = None,
        *,
        idle_preload: bool = True,
    ) -> ZygoteClient:
        """Launch a zygote without waiting for its imports (a few ms on the caller's thread).

        Spawns sent before it is ready queue in the socket; :meth:`wait_ready` waits for it.

        Args:
            on_exit, on_lost, idle_preload: see the class.

        Raises:
            ZygoteError: refused inside a zygote or a process it forked.
            OSError: the interpreter could not be started.
        """
        return cls(on_exit, on_lost, idle_preload=idle_preload)

    def set_callbacks(self, on_exit: ExitCallback | None, on_lost: LostCallback | None) -> None:
        """Set the exit callbacks of a zygote launched before its owner existed (call before
        the first :meth:`spawn` or :meth:`submit`; see the class for what they receive)."""
        self._on_exit = on_exit
        self._on_lost = on_lost

    @property
    def pid(self) -> int:
        """The zygote process's pid."""
        return self.popen.pid

    @property
    def alive(self) -> bool:
        """Whether the zygote can still serve spawns."""
        return self._gone is None

    def __repr__(self) -> str:
        state = (
            "ready"
            if self._ready and self._gone is None
            else (f"gone: {self._gone}" if self._gone else "starting")
        )
        return (
            f"<ZygoteClient pid={self.popen.pid} {state} pending={len(self._pending)} "
            f"live={len(self._live)} exited={len(self.exits)}>"
        )

    # -- reader thread ----------------------------------------------------------------------
    def _read(self) -> None:
        reader = FrameReader(self.sock, REPLY.size, 0)
        reason = "the zygote closed its connection"
        try:
            while reader.read_some():
                for body, _fds in reader.frames():
                    if len(body) != REPLY.size:
                        raise ProtocolViolation(
                            f"reply of {len(body)} bytes (expected {REPLY.size})"
                        )
                    self._dispatch(*REPLY.unpack(body))
        except (OSError, ProtocolViolation) as exc:
            reason = f"the zygote connection failed: {exc}"
        finally:
            reader.close_fds()
            with self._cond:
                self._gone = reason if not self._closing else "closed"
                lost = sorted(self._live)
                self._live.clear()
                self._cond.notify_all()
            if lost and self._on_lost is not None:
                try:
                    self._on_lost(lost)
                except Exception:
                    log.exception("zygote on_lost callback failed")

    def _dispatch(self, kind: int, a: int, b: int) -> None:
        if kind == K_EXITED:
            with self._cond:
                if a not in self._live:
                    return  # not ours or already reported: exactly once
                self._live.discard(a)
                self.exits[a] = b
                self._cond.notify_all()
            self._notify(a, b)
        elif kind in (K_SPAWNED, K_FAILED, K_REFUSED):
            with self._cond:
                if kind == K_SPAWNED:
                    self.exits.pop(b, None)  # a reused pid: the old record is stale
                if a in self._abandoned:  # timed out or abandoned: nobody will own this proc
                    self._abandoned.discard(a)
                    if kind == K_SPAWNED:
                        _kill(b)
                    return
                if kind == K_SPAWNED:
                    self._live.add(b)
                self._replies[a] = (kind, b)
                self._cond.notify_all()
        elif kind == K_HELLO:
            with self._cond:
                self._ready = True
                self._cond.notify_all()
        else:
            raise ProtocolViolation(f"unknown reply kind {kind}")

    def _notify(self, pid: int, status: int) -> None:
        if self._on_exit is None:
            return
        try:
            self._on_exit(pid, status)
        except Exception:
            log.exception("zygote on_exit callback failed for pid %d", pid)

    # -- API --------------------------------------------------------------------------------
    def wait_ready(self, timeout_s: float) -> None:
        """Wait until the zygote has done its imports and serves.

        Args:
            timeout_s: longest wait, in seconds.

        Raises:
            ZygoteError: it exited first (the message says why) or did not get ready in time.
        """
        with self._cond:
            if not self._cond.wait_for(lambda: self._ready or self._gone is not None, timeout_s):
                raise ZygoteError(
                    f"the zygote (pid {self.popen.pid}) was not ready within {timeout_s} s"
                )
            if self._gone is not None and not self._ready:
                raise ZygoteError(
                    f"the zygote (pid {self.popen.pid}) exited before serving: {self._gone}"
                )

    def spawn(
        self,
        argv: list[str],
        env: dict[str, str],
        cwd: str,
        fd: int,
        timeout_s: float = 10.0,
        *,
        target: str = PROC_MAIN,
        preload: tuple[str, ...] = (),
    ) -> int:
        """Fork a proc running ``target(argv)``; ``"{fd}"`` in ``argv`` becomes ``fd``'s number.

        :meth:`submit` then :meth:`result`; to start several procs at once, submit them all
        first, then collect their results (the zygote forks while the caller prepares the next).

        Args:
            argv, env, cwd, fd, target, preload: see :meth:`submit`.
            timeout_s: longest wait for the zygote's answer, in seconds (includes its start).

        Returns:
            The proc's pid (a child of the zygote, not of this process).

        Raises:
            ValueError: ``target`` is not ``"module:function"`` or the request is too large.
            ZygoteRefused: see :meth:`result`: start this proc afresh.
            ZygoteError: see :meth:`submit` and :meth:`result`.
        """
        return self.result(
            self.submit(argv, env, cwd, fd, target=target, preload=preload), timeout_s
        )

    def submit(
        self,
        argv: list[str],
        env: dict[str, str],
        cwd: str,
        fd: int,
        *,
        target: str = PROC_MAIN,
        preload: tuple[str, ...] = (),
    ) -> int:
        """Ask the zygote for a proc running ``target(argv)`` without waiting for its answer.

        Every request submitted must be collected with :meth:`result` or given up with
        :meth:`abandon` (which kills the proc).

        Args:
            argv: the proc's arguments (without the interpreter and module); ``"{fd}"`` becomes
                the number of the proc's copy of ``fd``.
            env: its complete environment.
            cwd: its working directory.
            fd: a descriptor (the listening socket) the proc gets a copy of; the caller keeps
                its own and may close it as soon as this returns.
            target: ``"module:function"`` the child imports and calls with ``argv``; the proc's
                exit status is 0 when it returns, the code of a ``SystemExit``, else 1.
            preload: modules the proc imports at start that the zygote imports between requests
                (``monarch._mesh.zygote_server.PRELOAD_IDLE``): the zygote imports them once,
                before forking this proc, rather than every proc importing them itself. Other
                names are ignored.

        Returns:
            The request's id, for :meth:`result` or :meth:`abandon`.

        Raises:
            ValueError: ``target`` is not ``"module:function"`` or the request is larger than
                ``MAX_REQUEST_BYTES`` (argv + env + ``sys.path``).
            ZygoteError: the zygote is gone.
        """
        if target.count(":") != 1:
            raise ValueError(f"target {target!r} is not 'module:function'")
        with self._cond:
            if self._gone is not None:
                raise ZygoteError(f"the zygote (pid {self.popen.pid}) is gone: {self._gone}")
            rid = next(self._ids)
        body = encode_request(rid, target, argv, env, cwd, list(sys.path), list(preload))
        if len(body) > MAX_REQUEST_BYTES:
            raise ValueError(
                f"spawn request of {len(body)} bytes (argv + env + sys.path; at most {MAX_REQUEST_BYTES})"
            )
        try:
            with self._send_lock:
                send_frame(self.sock, body, [fd])
        except OSError as exc:
            raise ZygoteError(f"the zygote (pid {self.popen.pid}) is gone: {exc}") from exc
        with self._cond:
            self._pending.add(rid)
        return rid

    def result(self, rid: int, timeout_s: float = 10.0) -> int:
        """Wait for the zygote's answer to request ``rid`` (from :meth:`submit`): the proc's pid.

        Args:
            rid: the request's id; each is collected once.
            timeout_s: longest wait, in seconds (includes the zygote's start).

        Returns:
            The proc's pid (a child of the zygote, not of this process).

        Raises:
            ZygoteRefused: the environment differs in a variable read at interpreter start
                (``STARTUP_ENV``) or the zygote is not single-threaded: start this proc afresh.
            ZygoteError: the zygote is gone, failed to fork, or did not answer within
                ``timeout_s`` (a proc it forks later is killed).
        """
        with self._cond:
            if rid not in self._pending:
                raise ValueError(f"request {rid} was not submitted, or was collected or abandoned")
            if not self._cond.wait_for(
                lambda: rid in self._replies or self._gone is not None, timeout_s
            ):
                self._pending.discard(rid)
                self._abandoned.add(rid)
                raise ZygoteError(
                    f"the zygote (pid {self.popen.pid}) did not answer within {timeout_s} s"
                )
            self._pending.discard(rid)
            if rid not in self._replies:
                raise ZygoteError(f"the zygote (pid {self.popen.pid}) is gone: {self._gone}")
            kind, value = self._replies.pop(rid)
        if kind == K_SPAWNED:
            return value
        if kind == K_REFUSED:
            why = (
                f"{STARTUP_ENV[value]} differs from the zygote's"
                if 0 <= value < len(STARTUP_ENV)
                else "a thread is running in the zygote"
            )
            raise ZygoteRefused(f"the zygote cannot fork this proc faithfully: {why}")
        raise ZygoteError(value, f"the zygote failed to fork: {os.strerror(value)}")

    def abandon(self, rid: int) -> None:
        """Give up on request ``rid`` (from :meth:`submit`): the proc it forked, or forks later,
        is SIGKILLed and its exit is not reported. No-op for a request already collected or
        abandoned."""
        with self._cond:
            if rid not in self._pending:
                return
            self._pending.discard(rid)
            reply = self._replies.pop(rid, None)
            if reply is None:
                self._abandoned.add(rid)
                return
            kind, pid = reply
            if kind == K_SPAWNED:
                self._live.discard(pid)
        if kind == K_SPAWNED:
            _kill(pid)

    def exit_status(self, pid: int) -> int | None:
        """The raw wait status of child ``pid`` once the zygote reported its exit, else None."""
        return self.exits.get(pid)

    def wait_exit(self, pid: int, timeout_s: float) -> int | None:
        """Wait for the exit of child ``pid``; its raw wait status.

        Args:
            pid: a pid returned by :meth:`spawn`.
            timeout_s: longest wait, in seconds.

        Returns:
            The wait status, or None if it did not exit within ``timeout_s`` or the zygote is gone
            without reporting it (see ``on_exit``).
        """
        with self._cond:
            self._cond.wait_for(lambda: pid in self.exits or pid not in self._live, timeout_s)
            return self.exits.get(pid)

    def forget(self, pid: int) -> None:
        """Drop the exit record of ``pid`` (once its status was consumed; bounds memory)."""
        with self._cond:
            self.exits.pop(pid, None)

    def close(self, timeout_s: float = 0.05) -> None:
        """Stop the zygote; its live children are SIGKILLed. Idempotent, returns in ~ms.

        Args:
            timeout_s: how long the zygote may take to exit by itself (it does at once unless
                busy with a preload); then it is SIGKILLed, which kills its children too.
        """
        with self._cond:
            if self._closing:
                return
            self._closing = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes our reader and gives the zygote EOF
        except OSError:
            pass
        try:
            self.popen.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(5.0)
        self._reader.join(1.0)
        self.sock.close()


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
