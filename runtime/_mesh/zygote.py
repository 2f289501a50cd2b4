"""A pre-imported fork server for proc processes (the "zygote").

Starting a proc with a fresh interpreter costs ~0.2 s of imports; forking a process that has
already imported the runtime costs a few milliseconds. :meth:`ZygoteClient.start` launches one
zygote (a child interpreter); each :meth:`ZygoteClient.spawn` sends it the proc's argv,
environment, working directory, ``sys.path`` and listening socket (passed with ``SCM_RIGHTS``),
and the zygote forks the proc. The zygote reaps its children and reports each exit status, so the
client can say ``killed by signal 9`` rather than "connection lost".

Protocol (one ``socketpair``, private to the client and its zygote): a stream of frames, each a
header ``<IH`` (body length in bytes, number of file descriptors sent with the frame) and a body.
Requests are JSON objects with exactly one descriptor; replies are ``<Bii`` records (kind and
two integers). Both sides read with a buffered reader, so any number of frames may arrive in one
read and a frame may span reads.

Lifetime and safety:

- The zygote and everything it forks carry ``MONARCH_IN_ZYGOTE=1`` in their environment from
  before their interpreter starts; :meth:`ZygoteClient.start` refuses to run under it, so a
  ``sitecustomize`` or ``.pth`` file that imports monarch cannot chain fork servers. Nothing in
  this module starts a process at import.
- The zygote is single-threaded when it forks (it reaps children from its select loop on
  ``SIGCHLD``, not from a thread), and refuses a spawn if a preloaded module left a Python thread
  running. Native threads of preloaded libraries must be fork-safe: OpenBLAS (numpy) stops its
  thread pool in a ``pthread_atfork`` handler and restarts it lazily in the child.
- Each forked proc gets ``PR_SET_PDEATHSIG(SIGKILL)``: when the zygote exits, for any reason, its
  children are killed by the kernel. The zygote exits when its control connection closes (the
  client closed it, exited or was killed), after SIGKILLing its live children.
- A forked proc starts from a clean state: default ``SIGINT``/``SIGCHLD`` handlers, no wakeup
  fd, no inherited control descriptors, the requested environment, working directory,
  ``sys.path`` and ``sys.argv``; ``random`` (by CPython) and ``numpy.random`` (here) are reseeded.
  What a fork cannot redo is read from the environment at interpreter start or import (see
  ``_STARTUP_ENV``): a spawn whose environment differs there is refused with
  :class:`ZygoteRefused`, and the caller starts that proc from scratch.
"""

from __future__ import annotations

import array
import gc
import itertools
import json
import logging
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from .._core.errors import MonarchError

__all__ = ["ZygoteClient", "ZygoteError", "ZygoteRefused"]

log = logging.getLogger(__name__)

PROC_MAIN = "monarch._mesh.proc_main:main"
"""The default spawn target: a proc's main function, called with its argv."""

GUARD_ENV = "MONARCH_IN_ZYGOTE"
"""Set to ``"1"`` in the environment of the zygote and of every process it forks."""

MAX_REQUEST_BYTES = 16 << 20  # argv + environment + sys.path of one proc; far above any real one
_MAX_FDS_PER_FRAME = 1
_MAX_QUEUED_FDS = 64
_HEADER = struct.Struct("<IH")  # body length in bytes, number of descriptors sent with the frame
_REPLY = struct.Struct("<Bii")  # kind, two integers (see the _K_* kinds)
_CHUNK = 1 << 16

# reply kinds, zygote -> client
_K_HELLO = ord("H")  # (zygote pid, 0): preloads done, serving
_K_SPAWNED = ord("P")  # (request id, pid)
_K_FAILED = ord("F")  # (request id, errno): fork() failed
_K_REFUSED = ord("R")  # (request id, index into _STARTUP_ENV, or -1: a thread is running)
_K_EXITED = ord("E")  # (pid, wait status)

# imported before the zygote says hello (every proc needs them) ...
_PRELOAD = ("monarch._mesh.proc_main", "monarch._mesh.runtime", "monarch.actor", "uvloop", "ctypes")
# ... and between requests, while no request waits: procs need monarch.config (pydantic, ~0.1 s)
# only when the job sets a MONARCH_* setting, so the first spawn does not wait for it
_PRELOAD_IDLE: tuple[str, ...] = ("monarch.config",)
_IDLE_QUIET_S = 0.5  # no request for this long: the zygote is idle

# Read once, at interpreter start or at the import of a preloaded module (the dynamic loader,
# CPython's startup, OpenBLAS/OpenMP thread pools of numpy): a forked proc would silently keep
# the zygote's values, so a spawn that asks for other values is refused.
_STARTUP_ENV = (
    "LD_LIBRARY_PATH",
    "LD_PRELOAD",
    "PYTHONHASHSEED",
    "PYTHONMALLOC",
    "PYTHONOPTIMIZE",
    "PYTHONDEVMODE",
    "PYTHONWARNINGS",
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "GOTO_NUM_THREADS",
)


class ZygoteError(MonarchError, OSError):
    """The zygote cannot serve: it refused to start, exited, broke the protocol or timed out."""


class ZygoteRefused(ZygoteError):
    """The zygote cannot fork this proc faithfully; start it from a fresh interpreter instead."""


class _ProtocolViolation(Exception):
    """A frame that breaks the zygote protocol (internal; the connection is dropped)."""


# -- framing (both sides) -----------------------------------------------------------------------
def _send_frame(sock: socket.socket, body: bytes, fds: list[int] | None = None) -> None:
    """Write one frame (blocking); ``fds`` travel with its first byte."""
    data = _HEADER.pack(len(body), len(fds or ())) + body
    if fds:
        sent = sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
    else:
        sent = sock.send(data)
    if sent < len(data):
        sock.sendall(data[sent:])


class _FrameReader:
    """Buffered reader of frames: any number per read, any frame across reads.

    Descriptors arrive with the first byte of the frame that announced them, so they queue in
    order and each complete frame takes as many as its header says.
    """

    def __init__(self, sock: socket.socket, max_body_bytes: int, max_fds_per_frame: int) -> None:
        self._sock = sock
        self._max_body = max_body_bytes
        self._max_fds = max_fds_per_frame
        self._anc_bytes = socket.CMSG_SPACE(max(1, max_fds_per_frame) * array.array("i").itemsize)
        self._buf = bytearray()
        self._fds: deque[int] = deque()

    def read_some(self) -> bool:
        """One ``recvmsg``; False at a clean end of stream.

        Raises:
            _ProtocolViolation: descriptors were truncated, too many queued, or the stream ended
                inside a frame.
            OSError: the socket failed.
        """
        data, anc, flags, _addr = self._sock.recvmsg(
            _CHUNK, self._anc_bytes, socket.MSG_CMSG_CLOEXEC
        )
        for level, kind, raw in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds = array.array("i")
                fds.frombytes(raw[: len(raw) - len(raw) % fds.itemsize])
                self._fds.extend(fds)
        if flags & socket.MSG_CTRUNC:
            raise _ProtocolViolation("more descriptors than a frame may carry")
        if len(self._fds) > _MAX_QUEUED_FDS:
            raise _ProtocolViolation(f"{len(self._fds)} descriptors queued without their frames")
        if not data:
            if self._buf:
                raise _ProtocolViolation(
                    f"the stream ended inside a frame ({len(self._buf)} bytes read)"
                )
            return False
        self._buf += data
        return True

    def frames(self) -> Iterator[tuple[bytes, list[int]]]:
        """The complete frames read so far, each with its descriptors (the caller owns them).

        Raises:
            _ProtocolViolation: a frame is too large, announces too many descriptors, or came
                without the descriptors it announced.
        """
        while len(self._buf) >= _HEADER.size:
            size, nfds = _HEADER.unpack_from(self._buf)
            if size > self._max_body:
                raise _ProtocolViolation(f"frame of {size} bytes (at most {self._max_body})")
            if nfds > self._max_fds:
                raise _ProtocolViolation(
                    f"frame announces {nfds} descriptors (at most {self._max_fds})"
                )
            end = _HEADER.size + size
            if len(self._buf) < end:
                return
            if len(self._fds) < nfds:
                raise _ProtocolViolation(
                    f"frame announces {nfds} descriptors, {len(self._fds)} arrived"
                )
            body = bytes(self._buf[_HEADER.size : end])
            del self._buf[:end]
            yield body, [self._fds.popleft() for _ in range(nfds)]

    def pending_fds(self) -> list[int]:
        """Descriptors received for frames not complete yet."""
        return list(self._fds)

    def close_fds(self) -> None:
        while self._fds:
            try:
                os.close(self._fds.popleft())
            except OSError:
                pass


# -- the zygote process ------------------------------------------------------------------------
@dataclass(frozen=True)
class _Request:
    rid: int
    target: str  # "module:function", called with argv
    argv: list[str]
    env: dict[str, str]
    cwd: str
    path: list[str]


def _parse_request(body: bytes) -> _Request:
    try:
        req = json.loads(body)
        r = _Request(req["id"], req["target"], req["argv"], req["env"], req["cwd"], req["path"])
    except (ValueError, KeyError, TypeError) as exc:
        raise _ProtocolViolation(f"malformed spawn request: {exc!r}") from exc
    if not (
        isinstance(r.rid, int)
        and isinstance(r.target, str)
        and r.target.count(":") == 1
        and isinstance(r.argv, list)
        and all(isinstance(a, str) for a in r.argv)
        and isinstance(r.env, dict)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in r.env.items())
        and isinstance(r.cwd, str)
        and isinstance(r.path, list)
        and all(isinstance(p, str) for p in r.path)
    ):
        raise _ProtocolViolation("spawn request with fields of the wrong types")
    return r


def serve(fd: int) -> None:
    """The zygote's main loop: runs in the zygote process, never returns.

    Args:
        fd: the zygote's end of the control socketpair.
    """
    import importlib

    if os.environ.get(GUARD_ENV) != "1":
        sys.exit(
            f"monarch zygote: {GUARD_ENV}=1 missing from the environment; start it with ZygoteClient.start"
        )
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the client's to handle; it closes us

    def preload(name: str) -> None:
        try:
            importlib.import_module(name)
        except ImportError:
            pass

    for name in _PRELOAD:  # the point: pay the imports once, not in every proc
        preload(name)
    # The preloaded modules live as long as any proc: move them out of the collector's reach
    # (Python's gc.freeze, meant for pre-fork servers): no proc's full collection walks them,
    # and walking would also touch their pages, undoing fork's copy-on-write sharing.
    gc.collect()
    gc.freeze()
    idle = list(_PRELOAD_IDLE)
    startup_env = [os.environ.get(k) for k in _STARTUP_ENV]
    me = os.getpid()

    ctl = socket.socket(fileno=fd)
    ctl.setblocking(True)
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)  # the wakeup fd does the work
    signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    reader = _FrameReader(ctl, MAX_REQUEST_BYTES, _MAX_FDS_PER_FRAME)
    live: set[int] = set()

    def reply(kind: int, a: int, b: int) -> None:
        _send_frame(ctl, _REPLY.pack(kind, a, b))

    def reap() -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            live.discard(pid)
            reply(_K_EXITED, pid, status)

    def handle(body: bytes, fds: list[int]) -> None:
        try:
            req = _parse_request(body)
            rid = req.rid
            if len(fds) != 1:
                raise _ProtocolViolation(f"spawn request with {len(fds)} descriptors (needs 1)")
            for i, name in enumerate(_STARTUP_ENV):
                if req.env.get(name) != startup_env[i]:
                    reply(_K_REFUSED, rid, i)
                    return
            if threading.active_count() != 1:
                reply(_K_REFUSED, rid, -1)
                return
            try:
                pid = os.fork()
            except OSError as exc:
                reply(_K_FAILED, rid, exc.errno or 0)
                return
            if pid == 0:
                _child(req, fds[0], [wake_r, wake_w, *reader.pending_fds()], ctl, me)
            live.add(pid)
            reply(_K_SPAWNED, rid, pid)
        finally:
            for f in fds:
                os.close(f)

    try:
        reply(_K_HELLO, me, 0)
        while True:
            reap()
            # an idle preload waits for a quiet spell: a client spawning N procs sends its
            # requests one after another, and an import between two of them (pydantic, ~0.1-0.4 s)
            # would delay the rest of that spawn
            ready, _, _ = select.select([ctl.fileno(), wake_r], [], [], _IDLE_QUIET_S if idle else None)
            if not ready:
                preload(idle.pop(0))  # single-threaded: never forks mid-import
                gc.freeze()
                continue
            if wake_r in ready:
                try:
                    while os.read(wake_r, 512):
                        pass
                except BlockingIOError:
                    pass
            if ctl.fileno() in ready:
                if not reader.read_some():
                    break
                for body, fds in reader.frames():
                    handle(body, fds)
    except _ProtocolViolation as exc:
        print(f"monarch zygote: protocol error, exiting: {exc}", file=sys.stderr, flush=True)
    except OSError:
        pass  # the client is gone
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        for pid in live:  # PR_SET_PDEATHSIG would do it too; this is explicit and immediate
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        os._exit(0)


def _child(req: _Request, fd: int, close: list[int], ctl: socket.socket, zygote: int) -> None:
    """The forked proc: reset what the zygote changed, then run its target. Never returns."""
    code = 1
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        ctl.close()
        for f in close:
            try:
                os.close(f)
            except OSError:
                pass
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        if libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")
        if os.getppid() != zygote:  # the zygote died before the prctl: nobody would kill us
            os._exit(1)
        os.environ.clear()
        os.environ.update(req.env)
        os.environ[GUARD_ENV] = "1"
        os.chdir(req.cwd)
        sys.path[:] = req.path
        argv = [a if a != "{fd}" else str(fd) for a in req.argv]
        import importlib

        module_name, func_name = req.target.split(":")
        module = importlib.import_module(module_name)
        sys.argv = [getattr(module, "__file__", None) or module_name, *argv]
        np = sys.modules.get("numpy")
        if np is not None:
            np.random.seed()  # a fresh interpreter seeds from the OS; CPython reseeds `random`
        try:
            getattr(module, func_name)(argv)
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


# -- the client --------------------------------------------------------------------------------
ExitCallback = Callable[[int, int], None]
LostCallback = Callable[[list[int]], None]


class ZygoteClient:
    """The client side of one zygote: start it, ask it for procs, hear about their exits.

    Thread-safe: ``spawn``, ``exit_status``, ``wait_exit`` and ``close`` may be called from any
    thread. Exit notifications come from the client's reader thread (named ``monarch zygote``).

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

    Raises:
        ZygoteError: refused inside a zygote or a process it forked (``MONARCH_IN_ZYGOTE``).
        OSError: the zygote's interpreter could not be started.
    """

    def __init__(
        self, on_exit: ExitCallback | None = None, on_lost: LostCallback | None = None
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
                    f"from monarch._mesh.zygote import serve; serve({theirs.fileno()})",
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
        cls, on_exit: ExitCallback | None = None, on_lost: LostCallback | None = None
    ) -> ZygoteClient:
        """Launch a zygote without waiting for its imports (a few ms on the caller's thread).

        Spawns sent before it is ready queue in the socket; :meth:`wait_ready` waits for it.

        Args:
            on_exit, on_lost: see the class.

        Raises:
            ZygoteError: refused inside a zygote or a process it forked.
            OSError: the interpreter could not be started.
        """
        return cls(on_exit, on_lost)

    def set_callbacks(self, on_exit: ExitCallback | None, on_lost: LostCallback | None) -> None:
        """Set the exit callbacks of a zygote launched before its owner existed (call before
        the first :meth:`spawn`; see the class for what they receive)."""
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
        return f"<ZygoteClient pid={self.popen.pid} {state} live={len(self._live)} exited={len(self.exits)}>"

    # -- reader thread ----------------------------------------------------------------------
    def _read(self) -> None:
        reader = _FrameReader(self.sock, _REPLY.size, 0)
        reason = "the zygote closed its connection"
        try:
            while reader.read_some():
                for body, _fds in reader.frames():
                    if len(body) != _REPLY.size:
                        raise _ProtocolViolation(
                            f"reply of {len(body)} bytes (expected {_REPLY.size})"
                        )
                    self._dispatch(*_REPLY.unpack(body))
        except (OSError, _ProtocolViolation) as exc:
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
        if kind == _K_EXITED:
            with self._cond:
                if a not in self._live:
                    return  # not ours or already reported: exactly once
                self._live.discard(a)
                self.exits[a] = b
                self._cond.notify_all()
            self._notify(a, b)
        elif kind in (_K_SPAWNED, _K_FAILED, _K_REFUSED):
            with self._cond:
                if kind == _K_SPAWNED:
                    self.exits.pop(b, None)  # a reused pid: the old record is stale
                if a in self._abandoned:  # its spawn() timed out: nobody will own this proc
                    self._abandoned.discard(a)
                    if kind == _K_SPAWNED:
                        _kill(b)
                    return
                if kind == _K_SPAWNED:
                    self._live.add(b)
                self._replies[a] = (kind, b)
                self._cond.notify_all()
        elif kind == _K_HELLO:
            with self._cond:
                self._ready = True
                self._cond.notify_all()
        else:
            raise _ProtocolViolation(f"unknown reply kind {kind}")

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
    ) -> int:
        """Fork a proc running ``target(argv)``; ``"{fd}"`` in ``argv`` becomes ``fd``'s number.

        Args:
            argv: the proc's arguments (without the interpreter and module).
            env: its complete environment.
            cwd: its working directory.
            fd: a descriptor (the listening socket) the proc gets a copy of; the caller keeps
                its own and closes it.
            timeout_s: longest wait for the zygote's answer, in seconds (includes its start).
            target: ``"module:function"`` the child imports and calls with ``argv``; the proc's
                exit status is 0 when it returns, the code of a ``SystemExit``, else 1.

        Returns:
            The proc's pid (a child of the zygote, not of this process).

        Raises:
            ZygoteRefused: the environment differs in a variable read at interpreter start
                (``_STARTUP_ENV``) or the zygote is not single-threaded: start this proc afresh.
            ZygoteError: the zygote is gone, failed to fork, or did not answer within
                ``timeout_s`` (a proc it forks later is killed).
        """
        if target.count(":") != 1:
            raise ValueError(f"target {target!r} is not 'module:function'")
        with self._cond:
            if self._gone is not None:
                raise ZygoteError(f"the zygote (pid {self.popen.pid}) is gone: {self._gone}")
            rid = next(self._ids)
        body = json.dumps(
            {
                "id": rid,
                "target": target,
                "argv": argv,
                "env": env,
                "cwd": cwd,
                "path": list(sys.path),
            }
        ).encode()
        if len(body) > MAX_REQUEST_BYTES:
            raise ValueError(
                f"spawn request of {len(body)} bytes (argv + env + sys.path; at most {MAX_REQUEST_BYTES})"
            )
        try:
            with self._send_lock:
                _send_frame(self.sock, body, [fd])
        except OSError as exc:
            raise ZygoteError(f"the zygote (pid {self.popen.pid}) is gone: {exc}") from exc
        with self._cond:
            if not self._cond.wait_for(
                lambda: rid in self._replies or self._gone is not None, timeout_s
            ):
                self._abandoned.add(rid)
                raise ZygoteError(
                    f"the zygote (pid {self.popen.pid}) did not answer within {timeout_s} s"
                )
            if rid not in self._replies:
                raise ZygoteError(f"the zygote (pid {self.popen.pid}) is gone: {self._gone}")
            kind, value = self._replies.pop(rid)
        if kind == _K_SPAWNED:
            return value
        if kind == _K_REFUSED:
            why = (
                f"{_STARTUP_ENV[value]} differs from the zygote's"
                if 0 <= value < len(_STARTUP_ENV)
                else "a thread is running in the zygote"
            )
            raise ZygoteRefused(f"the zygote cannot fork this proc faithfully: {why}")
        raise ZygoteError(value, f"the zygote failed to fork: {os.strerror(value)}")

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
