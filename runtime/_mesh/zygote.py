"""A pre-imported fork server for proc processes (the "zygote").

Starting a proc with a fresh interpreter costs ~0.2 s of imports here; forking a process that has
already imported the runtime costs a few milliseconds. The client starts one zygote on first use;
each request carries the proc's argv, environment, working directory, ``sys.path`` and its
listening socket (passed with ``SCM_RIGHTS``). The zygote reaps its children and reports each
exit status back, so the client can say ``killed by signal 9`` rather than "connection lost".
The zygote exits when the client's control connection closes.
"""

from __future__ import annotations

import array
import os
import pickle
import socket
import struct
import sys
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["ZygoteClient"]

_LEN = struct.Struct("<I")


def _send(sock: socket.socket, obj: Any, fds: list[int] | None = None) -> None:
    data = pickle.dumps(obj)
    msg = _LEN.pack(len(data)) + data
    if fds:
        sock.sendmsg([msg], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
    else:
        sock.sendall(msg)


def _recv(sock: socket.socket) -> tuple[Any, list[int]]:
    fds = array.array("i")
    msg, anc, _flags, _addr = sock.recvmsg(1 << 20, socket.CMSG_SPACE(16 * fds.itemsize))
    if not msg:
        raise EOFError
    for level, kind, data in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - (len(data) % fds.itemsize)])
    (n,) = _LEN.unpack_from(msg)
    body = msg[4:]
    while len(body) < n:
        more = sock.recv(n - len(body))
        if not more:
            raise EOFError
        body += more
    return pickle.loads(body), list(fds)


# imported before the first fork (every proc needs them) ...
_PRELOAD = ("monarch._mesh.proc_main", "monarch._mesh.runtime", "uvloop")
# ... and between requests, while no request waits (most procs need them soon)
_PRELOAD_IDLE = ("monarch.actor", "numpy")


def serve(fd: int) -> None:
    """The zygote's main loop (runs in the zygote process)."""
    global _IN_ZYGOTE
    _IN_ZYGOTE = True  # never prestart a zygote from inside one (or its forks)
    import importlib
    import select

    def preload(name: str) -> None:
        try:
            importlib.import_module(name)
        except ImportError:
            pass

    for name in _PRELOAD:  # the point: pay the imports once, not in every proc
        preload(name)
    idle = list(_PRELOAD_IDLE)
    from monarch._mesh import proc_main

    ctl = socket.socket(fileno=fd)
    lock = threading.Lock()

    def reap() -> None:
        import time

        while True:
            try:
                pid, status = os.waitpid(-1, 0)
            except ChildProcessError:
                time.sleep(0.01)
                continue
            with lock:
                try:
                    _send(ctl, ("exit", pid, status))
                except OSError:
                    return

    threading.Thread(target=reap, name="reaper", daemon=True).start()
    while True:
        if idle and not select.select([ctl], [], [], 0)[0]:
            preload(idle.pop(0))  # single-threaded: never forks mid-import
            continue
        try:
            req, fds = _recv(ctl)
        except (EOFError, OSError):
            break
        argv, env, cwd, path = req
        pid = os.fork()
        if pid == 0:
            ctl.close()
            os.environ.clear()
            os.environ.update(env)
            os.chdir(cwd)
            sys.path[:] = path
            argv = [a if a != "{fd}" else str(fds[0]) for a in argv]
            code = 0
            try:
                proc_main.main(argv)
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except BaseException:
                import traceback

                traceback.print_exc()
                code = 1
            os._exit(code)
        for f in fds:
            os.close(f)
        with lock:
            _send(ctl, ("pid", pid, 0))
    os._exit(0)


_IN_ZYGOTE = False
_prestarted: ZygoteClient | None = None
_prestart_lock = threading.Lock()
_prestart_done = threading.Event()


def prestart() -> None:
    """Start the zygote in the background now, in the root client only, so that its imports
    overlap with the user's script instead of delaying the first ``spawn_procs``.

    The runtime's later ``ZygoteClient(...)`` adopts it. A no-op inside procs and zygotes, when
    ``MONARCH_ZYGOTE=0``, and after the first call.
    """
    global _prestart_started
    if _IN_ZYGOTE or os.environ.get("MONARCH_ZYGOTE", "1") == "0" or "MONARCH_RUNTIME_DIR" in os.environ:
        return
    with _prestart_lock:
        if _prestart_started:
            return
        _prestart_started = True

    def start() -> None:
        global _prestarted
        try:
            _prestarted = ZygoteClient._start()
        except Exception:  # the runtime retries (and logs) when it needs one
            pass
        finally:
            _prestart_done.set()

    threading.Thread(target=start, name="monarch zygote prestart", daemon=True).start()


_prestart_started = False


class ZygoteClient:
    """The client side: start the zygote, ask it for procs, hear about their exits.

    Constructing one adopts the zygote started by :func:`prestart` when there is one.
    """

    _adopted = False

    def __new__(cls, on_exit: Callable[[int, int], None]) -> ZygoteClient:  # adopts the prestarted instance
        global _prestarted
        if _prestart_started:
            _prestart_done.wait(10.0)
            with _prestart_lock:
                got, _prestarted = _prestarted, None
            if got is not None and got.popen.poll() is None:
                got._on_exit = on_exit
                got._adopted = True
                return got
        return super().__new__(cls)

    @classmethod
    def _start(cls) -> ZygoteClient:
        self = super().__new__(cls)
        self._adopted = False
        self._init(lambda pid, status: None)
        return self

    def __init__(self, on_exit: Callable[[int, int], None]) -> None:
        if getattr(self, "_adopted", False):
            return
        self._init(on_exit)

    def _init(self, on_exit: Callable[[int, int], None]) -> None:
        import subprocess

        self._on_exit = on_exit
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        self.popen = subprocess.Popen(
            [sys.executable, "-c", f"from monarch._mesh.zygote import serve; serve({theirs.fileno()})"],
            pass_fds=[theirs.fileno()],
            env=env,
        )
        theirs.close()
        self.sock = ours
        self._lock = threading.Lock()
        self._pids: list[int] = []
        self._pid_ready = threading.Condition()
        self.exits: dict[int, int] = {}
        threading.Thread(target=self._reader, name="monarch zygote", daemon=True).start()

    def _reader(self) -> None:
        while True:
            try:
                (kind, pid, status), _ = _recv(self.sock)
            except (EOFError, OSError):
                with self._pid_ready:
                    self._pids.append(-1)
                    self._pid_ready.notify_all()
                return
            if kind == "pid":
                with self._pid_ready:
                    self._pids.append(pid)
                    self._pid_ready.notify_all()
            else:
                self.exits[pid] = status
                self._on_exit(pid, status)

    def spawn(self, argv: list[str], env: dict[str, str], cwd: str, fd: int, timeout_s: float = 10.0) -> int:
        """Fork a proc; ``"{fd}"`` in ``argv`` becomes the passed socket's number. Returns its pid.

        Raises:
            OSError: the zygote is gone or did not answer within ``timeout_s``.
        """
        with self._lock:
            _send(self.sock, (argv, env, cwd, list(sys.path)), [fd])
            with self._pid_ready:
                if not self._pid_ready.wait_for(lambda: bool(self._pids), timeout_s):
                    raise OSError("the zygote did not answer")
                pid = self._pids.pop(0)
        if pid < 0:
            raise OSError("the zygote exited")
        return pid

    def close(self) -> None:
        try:
            self.sock.close()
        finally:
            try:
                self.popen.wait(timeout=2.0)
            except Exception:
                self.popen.kill()
