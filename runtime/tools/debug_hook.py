"""The rank side of ``monarch debug``: what ``breakpoint()`` does in a proc.

Procs run with ``PYTHONBREAKPOINT=monarch.tools.debug_hook.breakpoint``, so Python's builtin
``breakpoint()`` calls :func:`breakpoint` here (``PYTHONBREAKPOINT=0`` set by the user still
disables every breakpoint: Python checks it before importing this module). The paused rank opens
its own connection to the client's debug controller, at the first reachable address of
``MONARCH_DEBUG_CONTROLLER`` (``unix:PATH``, then for ranks of other machines ``,tcp:HOST:PORT`` or
``,tls:HOST:PORT`` when the client listens on TCP; see :mod:`monarch.tools.debug_server`), logs in with the job's cluster token, registers (actor, rank, coords, host, function,
file:line) and runs a real :class:`pdb.Pdb` whose input and output travel on that connection. The
pdb runs in the paused thread and needs nothing from the proc's event loop, so a sync endpoint's
pause leaves the proc's other actors and its message delivery running; an async endpoint's pause
holds its proc's event loop (the paused frame is running on it), as a local pdb would.

Source of code pickled by value from the client's ``__main__`` (the proc has no such file) is
fetched from the controller before pdb starts, so ``l`` shows the real lines.

In the client itself (the process hosting the controller) ``breakpoint()`` is a local pdb.
"""

from __future__ import annotations

import linecache
import os
import pdb
import socket
import sys
import threading
from types import FrameType, TracebackType
from typing import Any

from . import debug_wire

__all__ = [
    "ENV_CONTROLLER",
    "ENV_POST_MORTEM",
    "breakpoint",
    "post_mortem",
]

ENV_CONTROLLER = "MONARCH_DEBUG_CONTROLLER"
"""Where the client's debug controller is (set by the client for its procs): ``unix:<path>``, and
when the client listens on TCP ``unix:<path>,tcp:HOST:PORT`` (``tls:`` over mutual TLS)."""
ENV_POST_MORTEM = "MONARCH_DEBUG_POST_MORTEM"
"""``1``: an unhandled exception in an endpoint opens a post-mortem pdb before it is reported."""


def _in_client() -> bool:
    server = sys.modules.get("monarch.tools.debug_server")
    return server is not None and bool(getattr(server, "running", lambda: False)())


def _identity() -> dict[str, Any]:
    info: dict[str, Any] = {
        "actor": "?",
        "rank": -1,
        "coords": {},
        "host": socket.gethostname(),
        "pid": os.getpid(),
    }
    try:
        from monarch.actor import context

        ins = context().actor_instance
        info.update(actor=ins.name, rank=ins.rank.rank, coords=dict(ins.rank))
    except Exception:  # outside an actor: still debuggable, just unnamed
        pass
    return info


class _Conn:
    """The paused rank's connection to the controller; thread-safe sends."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.lock = threading.Lock()
        self.open = True

    def send(self, obj: dict[str, Any]) -> None:
        if not self.open:
            return
        with self.lock:
            try:
                debug_wire.send(self.sock, obj)
            except OSError:
                self.open = False

    def recv(self) -> dict[str, Any] | None:
        if not self.open:
            return None
        try:
            return debug_wire.recv(self.sock)
        except (OSError, debug_wire.DebugWireError):
            self.open = False
            return None

    def close(self) -> None:
        self.open = False
        try:
            self.sock.close()
        except OSError:
            pass


def _connect() -> _Conn | None:
    token = debug_wire.cluster_token()
    local, remote = split_controller(os.environ.get(ENV_CONTROLLER, ""))
    if token is None or not (local.startswith("unix:") or remote):
        return None
    tried = []
    # the Unix socket where it exists (this machine: the client's own folder); else the network
    if local.startswith("unix:") and os.path.exists(local[len("unix:") :]):
        try:
            return _login(_dial_unix(local[len("unix:") :]), token)
        except (OSError, debug_wire.DebugWireError) as exc:
            tried.append(f"{local}: {exc}")
    elif local:
        tried.append(f"{local}: not on this machine")
    if remote:
        try:
            return _login(_dial_remote(remote), token)
        except (OSError, ValueError, debug_wire.DebugWireError) as exc:
            tried.append(f"{remote}: {exc}")
    print(
        f"monarch debug: cannot reach the client's debug controller ({'; '.join(tried)})",
        file=sys.stderr,
    )
    return None


def split_controller(value: str) -> tuple[str, str]:
    """``(unix address, network address)`` of a ``MONARCH_DEBUG_CONTROLLER`` value; either may be
    ``""`` (a Unix path may itself hold commas: the network part is the last one, if any)."""
    head, sep, tail = value.rpartition(",")
    if sep and tail.startswith(("tcp:", "tls:")):
        return head, tail
    if value.startswith(("tcp:", "tls:")):
        return "", value
    return value, ""


def _dial_unix(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError:
        sock.close()
        raise
    return sock


def _dial_remote(addr: str, timeout_s: float = 10.0) -> socket.socket:
    """A connection to ``tcp:HOST:PORT`` or (mutual TLS with this proc's ``MONARCH_TLS_*``)
    ``tls:HOST:PORT``; an unspecified host (``0.0.0.0``) is read as the client's host, from the
    address the proc was given for its client (``MONARCH_ROOT_ADDR``)."""
    scheme, _, rest = addr.partition(":")
    host, _, port = rest.rpartition(":")
    host = host.strip("[]")
    if scheme not in ("tcp", "tls") or not host or not port.isdigit():
        raise ValueError(f"not a tcp:HOST:PORT or tls:HOST:PORT address: {addr!r}")
    if host in ("0.0.0.0", "::"):
        root = os.environ.get("MONARCH_ROOT_ADDR", "")
        if root.startswith("tcp:"):
            host = root[len("tcp:") :].rpartition(":")[0].strip("[]")
    ctx = None
    if scheme == "tls":
        from .._transport.tls import tls_from_env

        tls = tls_from_env()
        if tls is None:
            raise ValueError(f"{addr} needs TLS, and this proc has no MONARCH_TLS_* files")
        ctx = tls.client_context()
    sock = socket.create_connection((host, int(port)), timeout=timeout_s)
    try:
        return ctx.wrap_socket(sock) if ctx is not None else sock
    except OSError:
        sock.close()
        raise


def _login(sock: socket.socket, token: bytes) -> _Conn:
    try:
        debug_wire.login(sock, token, "rank")
    except (OSError, debug_wire.DebugWireError):
        sock.close()
        raise
    return _Conn(sock)


DYNAMIC = "<dynamic-code>"
"""The file name cloudpickle gives code it pickles by value (a function or class of ``__main__``)."""
_resolved: dict[str, str] = {}  # DYNAMIC -> the client's file whose source linecache holds for it


def _fetch_sources(conn: _Conn, frame: FrameType | None) -> None:
    """Put into linecache the client's source of every file on the stack this proc cannot read
    (and of code pickled by value, whose file name cloudpickle replaced with ``<dynamic-code>``)."""
    seen: set[str] = set()
    while frame is not None:
        code = frame.f_code
        name = code.co_filename
        frame = frame.f_back
        if name in seen or name in linecache.cache:
            continue
        if name != DYNAMIC and (name.startswith("<") or os.path.exists(name)):
            continue
        seen.add(name)
        conn.send(
            {
                "t": "source",
                "file": name,
                "function": code.co_name,
                "firstlineno": code.co_firstlineno,
            }
        )
        reply = conn.recv()
        text = reply.get("text") if reply else None
        path = reply.get("path") if reply else None
        if isinstance(text, str):
            lines = text.splitlines(keepends=True)
            linecache.cache[name] = (len(text), None, lines, name)  # mtime None: never re-checked
            if name == DYNAMIC and isinstance(path, str):
                _resolved[name] = path


def shown_file(name: str) -> str:
    """The file name to show for ``name``: the client's file for code pickled by value."""
    return _resolved.get(name, name)


class _SocketIO:
    """pdb's stdin and stdout, on the controller connection."""

    def __init__(self, conn: _Conn) -> None:
        self.conn = conn
        self.pdb: _RemotePdb | None = None
        self._out: list[str] = []

    def write(self, s: str) -> int:
        self._out.append(s)
        return len(s)

    def flush(self) -> None:
        if self._out:
            self.conn.send({"t": "out", "s": "".join(self._out)})
            self._out.clear()

    def readline(self) -> str:
        self.flush()
        where = self.pdb.where_info() if self.pdb is not None else {}
        self.conn.send({"t": "ready", **where})
        while True:
            msg = self.conn.recv()
            if msg is None:  # the client went away: let the rank run on
                if self.pdb is not None:
                    self.pdb.clear_all_breaks()
                return "c\n"
            if msg.get("t") == "line" and isinstance(msg.get("s"), str):
                if msg.get("clear") and self.pdb is not None:
                    self.pdb.clear_all_breaks()
                return str(msg["s"]).replace("\n", " ") + "\n"


class _RemotePdb(pdb.Pdb):
    def __init__(self, conn: _Conn) -> None:
        self.io = _SocketIO(conn)
        super().__init__(stdin=self.io, stdout=self.io, nosigint=True, readrc=False)  # type: ignore[arg-type]
        self.use_rawinput = False
        self.io.pdb = self
        self.conn = conn

    def where_info(self) -> dict[str, Any]:
        f = self.curframe
        if f is None:
            return {}
        return {
            "function": f.f_code.co_name,
            "file": shown_file(f.f_code.co_filename),
            "line": f.f_lineno,
        }

    def format_stack_entry(self, frame_lineno: Any, lprefix: str = ": ") -> str:
        entry = super().format_stack_entry(frame_lineno, lprefix)
        path = _resolved.get(DYNAMIC)
        return entry.replace(DYNAMIC, path) if path else entry

    def _release(self) -> None:
        self.io.flush()
        self.conn.send({"t": "gone"})
        self.conn.close()

    def set_continue(self) -> None:
        super().set_continue()
        if not self.breaks:
            self._release()

    def set_quit(self) -> None:
        super().set_quit()
        self._release()


def _start(
    conn: _Conn, frame: FrameType | None, where: dict[str, Any], post_mortem: bool
) -> _RemotePdb:
    _fetch_sources(conn, frame)
    info = _identity()
    info.update(where, post_mortem=post_mortem)
    info["file"] = shown_file(str(info.get("file")))
    conn.send({"t": "register", **info})
    return _RemotePdb(conn)


def breakpoint(*args: Any, **kwargs: Any) -> None:
    """Pause this rank in a pdb reachable from ``monarch debug`` (``sys.breakpointhook``).

    Without a reachable debug controller (no ``MONARCH_DEBUG_CONTROLLER`` or no cluster token)
    it falls back to a local pdb on this process's own terminal.
    """
    frame = sys._getframe(1)
    if _in_client():
        pdb.Pdb().set_trace(frame)
        return
    conn = _connect()
    if conn is None:
        pdb.Pdb().set_trace(frame)
        return
    where = {
        "function": frame.f_code.co_name,
        "file": frame.f_code.co_filename,
        "line": frame.f_lineno,
    }
    _start(conn, frame, where, post_mortem=False).set_trace(frame)


def post_mortem(exc: BaseException) -> bool:
    """Open a post-mortem pdb on ``exc`` (an endpoint's unhandled exception) when
    ``MONARCH_DEBUG_POST_MORTEM=1``; returns once the user continues. Returns whether it ran."""
    if os.environ.get(ENV_POST_MORTEM) != "1" or os.environ.get("PYTHONBREAKPOINT") == "0":
        return False
    tb: TracebackType | None = exc.__traceback__
    if tb is None:
        return False
    conn = _connect()
    if conn is None:
        return False
    last = tb
    while last.tb_next is not None:
        last = last.tb_next
    where = {
        "function": last.tb_frame.f_code.co_name,
        "file": last.tb_frame.f_code.co_filename,
        "line": last.tb_lineno,
    }
    p = _start(conn, last.tb_frame, where, post_mortem=True)
    p.io.write(f"post-mortem: {type(exc).__name__}: {exc}\n")
    p.reset()
    try:
        p.interaction(None, tb)
    finally:
        if conn.open:
            p._release()
    return True
