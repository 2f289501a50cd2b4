"""The client side of ``monarch debug``: the debug controller and the debug server.

:func:`install` (run once in the client, before procs are spawned) listens on a Unix socket in a
private folder for paused ranks and returns the environment the procs need. It costs one idle
thread blocked in ``accept`` until a rank pauses. When the first rank registers, the debug server
starts listening on ``MONARCH_DEBUG_SERVER_HOST:MONARCH_DEBUG_SERVER_PORT`` (default
``localhost:27000``) for ``monarch debug``. Two clients on one machine: the first binds the port;
the second says so on stderr and keeps its sessions (set ``MONARCH_DEBUG_SERVER_PORT`` for it).

``monarch debug`` logs in with the secret in ``<tmp>/monarch-debug-<uid>/<port>.secret`` (mode
0600, written by the server) or with the job's ``MONARCH_CLUSTER_TOKEN``.

Ranks on other machines (procs of host agents) cannot reach that Unix socket. When the client
listens on TCP for them (``enable_transport("tcp://...")``, or ``attach_to_workers`` before the
client runtime started), the controller also listens on a TCP port of the same address, over
mutual TLS when the job has TLS files (``MONARCH_TLS_*``), and the procs get it after the Unix
socket in ``MONARCH_DEBUG_CONTROLLER`` (``unix:PATH,tcp:HOST:PORT`` or ``...,tls:HOST:PORT``); a
rank dials the Unix socket where that path exists, else the network address. A rank logs in there
with the cluster token, as on the Unix socket; nothing else is read from an unauthenticated peer.
"""

from __future__ import annotations

import os
import re
import secrets
import socket
import ssl
import sys
import tempfile
import threading
from typing import Any

from . import debug_wire
from .debug_hook import DYNAMIC, ENV_CONTROLLER

__all__ = ["Session", "install", "parse_ranks", "running", "secret_path"]

ENV_HOST = "MONARCH_DEBUG_SERVER_HOST"
ENV_PORT = "MONARCH_DEBUG_SERVER_PORT"
DEFAULT_HOST = "localhost"
DEFAULT_PORT = 27000
PROMPT = "monarch_dbg> "
HOOK = "monarch.tools.debug_hook.breakpoint"

HELP = """monarch_dbg commands:
\tlist - list all paused ranks (actor, rank, coords, host, function, file:line)
\tattach <actor_name> <rank> - a pdb session on that rank ('detach' returns here)
\tcast <actor_name> ranks(...) <command> - send one pdb command to many ranks, answers per rank.
\t\tranks(1), ranks(1,4,6), ranks(start?:stop?:step?), ranks(dim1=1:5:2, dim2=3, dim4=(3,6))
\tcontinue - clear all breakpoints and let every paused rank continue
\thelp - print this help message
\tquit - leave the debugger, leaving all sessions in place
"""

_state_lock = threading.Lock()
_controller: _Controller | None = None


def running() -> bool:
    """Whether this process hosts a debug controller (it is a client that called :func:`install`)."""
    return _controller is not None


def secret_path(port: int) -> str:
    """Where the server on ``port`` keeps the secret ``monarch debug`` logs in with."""
    return os.path.join(tempfile.gettempdir(), f"monarch-debug-{os.getuid()}", f"{port}.secret")


class Session:
    """One paused rank, as the controller sees it."""

    def __init__(self, sock: socket.socket, info: dict[str, Any]) -> None:
        self.sock = sock
        self.info = info
        self.cond = threading.Condition()
        self.out: list[str] = []
        self.ready = False
        self.gone = False
        self.busy = threading.Lock()  # one command at a time

    @property
    def key(self) -> tuple[str, int]:
        return (str(self.info.get("actor")), int(self.info.get("rank", -1)))

    def on_frame(self, msg: dict[str, Any]) -> None:
        with self.cond:
            t = msg.get("t")
            if t == "out" and isinstance(msg.get("s"), str):
                self.out.append(msg["s"])
            elif t == "ready":
                for k in ("function", "file", "line"):
                    if k in msg:
                        self.info[k] = msg[k]
                self.ready = True
            elif t == "gone":
                self.gone = True
            self.cond.notify_all()

    def take_output(self) -> str:
        with self.cond:
            s = "".join(self.out)
            self.out.clear()
        return s.removesuffix("(Pdb) ")  # pdb's own prompt: the CLI shows one

    def wait_ready(self) -> str:
        """Wait until the rank reads its next command (or is gone); its output so far."""
        with self.cond:
            self.cond.wait_for(lambda: self.ready or self.gone)
        return self.take_output()

    def run(self, line: str, clear: bool = False, keep_pending: bool = True) -> str:
        """Send one pdb command; the output it produced, up to the next prompt or the end."""
        with self.busy:
            before = self.wait_ready()
            if not keep_pending:
                before = ""
            with self.cond:
                if self.gone:
                    return before
                self.ready = False
            try:
                debug_wire.send(self.sock, {"t": "line", "s": line, "clear": clear})
            except OSError:
                with self.cond:
                    self.gone = True
                return before
            return before + self.wait_ready()


def parse_ranks(text: str) -> Any:
    """Parse the inside of Monarch's ``ranks(...)``: ``1``, ``1,4,6``, ``start?:stop?:step?`` or
    ``dim=1:5:2, dim2=3, dim4=(3,6)``. Returns an int, a list, a range, or a dict of those.

    Raises:
        ValueError: the text is none of these.
    """

    def one(t: str) -> Any:
        t = t.strip()
        if re.fullmatch(r"\d+", t):
            return int(t)
        if re.fullmatch(r"\d*:\d*(:\d*)?", t):
            parts = [p for p in t.split(":")]
            start = int(parts[0]) if parts[0] else 0
            stop = int(parts[1]) if parts[1] else sys.maxsize
            step = int(parts[2]) if len(parts) > 2 and parts[2] else 1
            return range(start, stop, step)
        if re.fullmatch(r"\(\s*\d+(\s*,\s*\d+)*\s*\)", t):
            return [int(x) for x in t.strip("() ").split(",")]
        raise ValueError(f"bad rank selection {t!r}")

    text = text.strip()
    if "=" in text:
        out: dict[str, Any] = {}
        for m in re.finditer(r"([A-Za-z_]\w*)\s*=\s*(\([^)]*\)|[\d:]+)\s*(,|$)", text):
            out[m.group(1)] = one(m.group(2))
        if not out or re.sub(r"([A-Za-z_]\w*)\s*=\s*(\([^)]*\)|[\d:]+)\s*(,|$)", "", text).strip():
            raise ValueError(f"bad rank selection {text!r}")
        return out
    if "," in text:
        return one(f"({text})")
    return one(text)


def _selected(sel: Any, rank: int, coords: dict[str, int]) -> bool:
    def hit(s: Any, v: int) -> bool:
        return v == s if isinstance(s, int) else v in s

    if isinstance(sel, dict):
        return all(d in coords and hit(s, coords[d]) for d, s in sel.items())
    return hit(sel, rank)


class _Controller:
    def __init__(self, token: bytes | None, folder: str | None = None) -> None:
        self.sessions: dict[tuple[str, int], Session] = {}
        self.lock = threading.Lock()
        self.token = token or debug_wire.cluster_token()
        if self.token is None:
            self.token = secrets.token_hex(32).encode()
            os.environ["MONARCH_CLUSTER_TOKEN"] = self.token.decode()
        # the client's private runtime folder (removed when the client ends), else a new 0700 one
        self.folder = folder if folder is not None else tempfile.mkdtemp(prefix="monarch-dbg-")
        self.path = os.path.join(self.folder, "controller.sock")
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(self.path)
        self.listener.listen(64)
        self.sources: dict[str, str] = {}
        main = sys.modules.get("__main__")
        main_file = getattr(main, "__file__", None)
        if isinstance(main_file, str):
            try:
                with open(main_file, encoding="utf-8") as f:
                    self.sources[os.path.abspath(main_file)] = f.read()
            except OSError:
                pass
        self.server: socket.socket | None = None
        self.server_port = 0
        self.secret = secrets.token_hex(32).encode()
        self.remote_addr: str | None = None  # where ranks of other machines connect, once asked
        self._remote_tls: ssl.SSLContext | None = None
        threading.Thread(
            target=self._accept_ranks,
            args=(self.listener,),
            name="monarch debug controller",
            daemon=True,
        ).start()

    def listen_remote(self, host: str) -> str:
        """Also accept paused ranks of other machines on ``host`` (an IP address of this
        machine), on a port the system picks; TLS when ``MONARCH_TLS_*`` are set.

        Returns:
            The address ranks dial: ``tcp:HOST:PORT`` or ``tls:HOST:PORT``.

        Raises:
            OSError: ``host`` cannot be bound.
            ValueError: the TLS settings are incomplete or their files invalid.
        """
        from .._transport.tls import tls_from_env

        tls = tls_from_env()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.create_server((host, 0), family=family, backlog=64)
        self._remote_tls = tls.server_context() if tls is not None else None
        shown = f"[{host}]" if family == socket.AF_INET6 else host
        self.remote_addr = f"{'tls' if tls is not None else 'tcp'}:{shown}:{sock.getsockname()[1]}"
        threading.Thread(
            target=self._accept_ranks,
            args=(sock,),
            name="monarch debug controller (tcp)",
            daemon=True,
        ).start()
        return self.remote_addr

    # -- ranks ---------------------------------------------------------------------------------
    def _accept_ranks(self, listener: socket.socket) -> None:
        while True:
            try:
                sock, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=self._rank, args=(sock,), daemon=True).start()

    def _rank(self, sock: socket.socket) -> None:
        session: Session | None = None
        try:
            if self._remote_tls is not None and sock.family != socket.AF_UNIX:
                sock.settimeout(10.0)  # a peer that never finishes the handshake is dropped
                sock = self._remote_tls.wrap_socket(sock, server_side=True)
            assert self.token is not None
            debug_wire.welcome(sock, [self.token], "rank")
            while True:
                msg = debug_wire.recv(sock)
                t = msg.get("t")
                if t == "register" and session is None:
                    info = {
                        k: msg.get(k)
                        for k in (
                            "actor",
                            "rank",
                            "coords",
                            "host",
                            "pid",
                            "function",
                            "file",
                            "line",
                            "post_mortem",
                        )
                    }
                    if not isinstance(info["rank"], int) or not isinstance(info["coords"], dict):
                        return
                    session = Session(sock, info)
                    with self.lock:
                        self.sessions[session.key] = session
                    self._announce(session)
                elif t == "source":
                    path, text = self.source_for(msg)
                    debug_wire.send(sock, {"t": "source", "path": path, "text": text})
                elif session is not None:
                    session.on_frame(msg)
                    if session.gone:
                        return
        except (OSError, debug_wire.DebugWireError):
            pass
        finally:
            if session is not None:
                session.on_frame({"t": "gone"})
                with self.lock:
                    if self.sessions.get(session.key) is session:
                        del self.sessions[session.key]
            sock.close()

    def _announce(self, s: Session) -> None:
        port = self._ensure_server()
        i = s.info
        where = f"{i.get('file')}:{i.get('line')}"
        kind = "post-mortem" if i.get("post_mortem") else "paused"
        if port:
            hint = (
                f"run `monarch debug --port {port}`"
                if port != DEFAULT_PORT
                else "run `monarch debug`"
            )
        else:
            hint = "the debug server could not listen (see above)"
        print(
            f"monarch debug: {i.get('actor')} rank {i.get('rank')} {kind} at {where}; {hint}",
            file=sys.stderr,
            flush=True,
        )

    def source_for(self, msg: dict[str, Any]) -> tuple[str | None, str | None]:
        """The client file a rank asks for: one this client kept (its ``__main__``), by name, or
        for code pickled by value (``<dynamic-code>``) the one defining that function there."""
        name, fn, first = msg.get("file"), msg.get("function"), msg.get("firstlineno")
        if not isinstance(name, str):
            return None, None
        if name in self.sources:
            return name, self.sources[name]
        if name == DYNAMIC and isinstance(fn, str) and isinstance(first, int):
            pattern = re.compile(rf"^\s*(async\s+)?(def|class)\s+{re.escape(fn)}\b")
            for path, text in self.sources.items():
                lines = text.splitlines()
                if any(pattern.match(line) for line in lines[max(first - 1, 0) : first + 20]):
                    return path, text
        return None, None

    # -- the server for `monarch debug` ---------------------------------------------------------
    def _ensure_server(self) -> int:
        with self.lock:
            if self.server is not None:
                return self.server_port
            host = os.environ.get(ENV_HOST, DEFAULT_HOST)
            try:
                port = int(os.environ.get(ENV_PORT, str(DEFAULT_PORT)))
            except ValueError:
                print(f"monarch debug: {ENV_PORT} is not a port number", file=sys.stderr)
                return 0
            try:
                srv = socket.create_server((host, port), reuse_port=False)
            except OSError as exc:
                print(
                    f"monarch debug: cannot listen on {host}:{port} ({exc}; another client's debug server?); "
                    f"set {ENV_PORT} to a free port for this client",
                    file=sys.stderr,
                )
                return 0
            folder = os.path.dirname(secret_path(port))
            os.makedirs(folder, mode=0o700, exist_ok=True)
            st = os.stat(folder)
            if st.st_uid == os.getuid() and st.st_mode & 0o077 == 0:
                fd = os.open(secret_path(port), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "wb") as f:
                    f.write(self.secret)
            self.server, self.server_port = srv, port
            threading.Thread(
                target=self._accept_clis, args=(srv,), name="monarch debug server", daemon=True
            ).start()
            return port

    def _accept_clis(self, srv: socket.socket) -> None:
        while True:
            try:
                sock, _ = srv.accept()
            except OSError:
                return
            threading.Thread(target=self._cli, args=(sock,), daemon=True).start()

    def _cli(self, sock: socket.socket) -> None:
        try:
            assert self.token is not None
            debug_wire.welcome(sock, [self.secret, self.token], "cli")
            _CliSession(self, sock).run()
        except (OSError, debug_wire.DebugWireError):
            pass
        finally:
            sock.close()

    def sorted_sessions(self) -> list[Session]:
        with self.lock:
            return sorted(self.sessions.values(), key=lambda s: s.key)


class _CliSession:
    def __init__(self, ctl: _Controller, sock: socket.socket) -> None:
        self.ctl = ctl
        self.sock = sock

    def out(self, s: str) -> None:
        if s:
            debug_wire.send(self.sock, {"t": "out", "s": s})

    def ask(self, prompt: str) -> str | None:
        debug_wire.send(self.sock, {"t": "prompt", "s": prompt})
        msg = debug_wire.recv(self.sock, 1 << 16)
        if msg.get("t") != "line" or not isinstance(msg.get("s"), str):
            return None
        return str(msg["s"])

    def run(self) -> None:
        self.out("\n************************ MONARCH DEBUGGER ************************\n")
        self.out(
            "Enter 'help' for a list of commands.\nEnter 'list' to show all active breakpoints.\n\n"
        )
        while True:
            line = self.ask(PROMPT)
            if line is None:
                return
            line = line.strip()
            if not line:
                continue
            try:
                if not self.command(line):
                    return
            except ValueError as exc:
                self.out(f"Error processing command: {exc}\n")

    def command(self, line: str) -> bool:
        word, _, rest = line.partition(" ")
        if word in ("h", "help"):
            self.out(HELP)
        elif word in ("l", "list"):
            rows = [
                [
                    str(i.get("actor")),
                    str(i.get("rank")),
                    str(i.get("coords")),
                    str(i.get("host")),
                    str(i.get("function")),
                    f"{i.get('file')}:{i.get('line')}",
                ]
                for i in (s.info for s in self.ctl.sorted_sessions())
            ]
            debug_wire.send(self.sock, {"t": "table", "rows": rows})
        elif word in ("a", "attach"):
            m = re.fullmatch(r"([-_a-zA-Z0-9]+)\s+(\d+)", rest.strip())
            if not m:
                raise ValueError("usage: attach <actor_name> <rank>")
            self.attach(m.group(1), int(m.group(2)))
        elif word == "cast":
            m = re.fullmatch(r"([-_a-zA-Z0-9]+)\s+ranks\((.*?)\)\s+(\S.*)", rest.strip())
            if not m:
                raise ValueError("usage: cast <actor_name> ranks(...) <pdb command>")
            sel = parse_ranks(m.group(2))
            targets = [
                s
                for s in self.ctl.sorted_sessions()
                if s.key[0] == m.group(1) and _selected(sel, s.key[1], s.info.get("coords") or {})
            ]
            if not targets:
                self.out(f"no paused rank of {m.group(1)} matches ranks({m.group(2)})\n")
            self.fan_out(targets, m.group(3))
        elif word in ("c", "continue"):
            targets = self.ctl.sorted_sessions()
            self.fan_out(targets, "c", clear=True)
            self.out(f"continued {len(targets)} paused rank(s)\n")
        elif word in ("q", "quit"):
            return False
        else:
            raise ValueError(f"unknown command {line!r} (try 'help')")
        return True

    def fan_out(self, targets: list[Session], cmd: str, clear: bool = False) -> None:
        answers: dict[tuple[str, int], str] = {}

        def one(s: Session) -> None:
            answers[s.key] = s.run(cmd, clear=clear, keep_pending=False)

        threads = [threading.Thread(target=one, args=(s,), daemon=True) for s in targets]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if not clear:
            for s in targets:
                self.out(f"=== {s.key[0]} rank {s.key[1]} ===\n{answers.get(s.key, '')}")

    def attach(self, actor: str, rank: int) -> None:
        with self.ctl.lock:
            s = self.ctl.sessions.get((actor, rank))
        if s is None:
            raise ValueError(f"no paused rank {rank} of {actor!r} (see 'list')")
        i = s.info
        self.out(f"Attached to debug session for {actor} {rank} ({i.get('host')})\n")
        self.out(s.wait_ready())
        while True:
            line = self.ask("(Pdb) ")
            if line is None:
                return
            if line.strip() == "detach":
                self.out(f"Detached from debug session for {actor} {rank} ({i.get('host')})\n")
                return
            self.out(s.run(line))
            if s.gone:
                self.out(f"Debug session for {actor} {rank} ended; back to monarch_dbg\n")
                return


def install(token: bytes | None = None, folder: str | None = None) -> dict[str, str]:
    """Start this client's debug controller (once) and return the environment its procs need.

    The caller passes them to its procs only (not ``os.environ``: other programs this client starts
    must not route their breakpoints here); a ``PYTHONBREAKPOINT`` the user set is kept (``0``
    keeps breakpoints off).

    Args:
        token: the job's cluster token, which paused ranks log in with; None: the one in
            ``MONARCH_CLUSTER_TOKEN``, else a new one put there (procs inherit it).
        folder: a private (0700) folder for the controller's Unix socket, removed by its owner
            (the client runtime passes its runtime folder); None: a new ``monarch-dbg-*`` folder.

    Returns:
        ``MONARCH_DEBUG_CONTROLLER`` (with the network address when the client listens on TCP,
        see the module docstring; a failure to listen there is printed on stderr and leaves it
        out) and ``PYTHONBREAKPOINT``.
    """
    global _controller
    with _state_lock:
        if _controller is None:
            _controller = _Controller(token, folder)
        env = {
            ENV_CONTROLLER: "unix:" + _controller.path,
            "PYTHONBREAKPOINT": os.environ.get("PYTHONBREAKPOINT") or HOOK,
        }
        host = _tcp_listen_host()
        if host is not None and _controller.remote_addr is None:
            try:
                _controller.listen_remote(host)
            except (OSError, ValueError) as exc:
                print(
                    f"monarch debug: ranks on other hosts cannot reach this client's debugger "
                    f"(cannot listen on {host}: {exc})",
                    file=sys.stderr,
                )
        if _controller.remote_addr is not None:
            env[ENV_CONTROLLER] += "," + _controller.remote_addr
        return env


def _tcp_listen_host() -> str | None:
    """The IP address the client runtime about to start listens on for other machines
    (:func:`monarch._mesh.host_client.requested_listen`), or None (Unix socket only)."""
    from .._mesh.host_client import requested_listen

    listen = requested_listen()
    if not listen or not listen.startswith("tcp:"):
        return None
    host = listen[len("tcp:") :].rpartition(":")[0].strip("[]")
    return host or None
