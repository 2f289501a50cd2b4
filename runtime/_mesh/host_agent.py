"""The host agent: one per machine, it starts procs there for any client that authenticates.

``monarch host serve --listen tcp://HOST:PORT`` and ``run_worker_loop_forever(address=...)`` run
:class:`HostAgent`. Semantics follow Monarch's ``run_worker_loop_forever`` (a generic worker that
a launcher starts on each machine; the client's ``attach_to_workers`` places procs on it), with
what Monarch's lacks: every client is authenticated (cluster token and/or mutual TLS) before a byte of its
requests is read (``agent_wire.py``), the agent runs no code of the client (JSON requests only;
it starts procs, whose links are authenticated with the same token), and when a client
disconnects or dies the agent SIGKILLs that client's procs and keeps serving the next one.

Procs are forked from the agent's own fork server (``zygote.py``, started with the agent so its
imports overlap the wait for a client); each gets a TCP listening socket bound by the agent on
the host's advertised address, and its owner is the client: the client dials it first (the
proc's owner link), procs of other hosts dial it over authenticated TCP. The agent watches each
proc's exit (the fork server's reports, or a pidfd) and tells the client how it ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from typing import Any

from .._core.errors import ProtocolError
from .._core.future import Future
from .._transport.address import bind_listener, from_url, parse_address, split_alias, tune_socket
from .._transport.auth import AsyncStream
from .._transport.tls import ENV_CA, ENV_CERT, ENV_KEY, TlsConfig, tls_from_env, tls_from_monarch
from . import agent_wire, logs
from .procs import describe_status
from .settings import SETTING_VARIABLES
from .zygote import ZygoteClient, ZygoteError, ZygoteRefused

__all__ = [
    "HostAgent",
    "InsecureAgentError",
    "run_worker_loop_forever",
    "start_worker_loop_forever",
    "tls_from_options",
    "token_from_config",
]

log = logging.getLogger("monarch.host_agent")

AUTH_TIMEOUT_S = 10.0
MAX_UNAUTHENTICATED = 64
SPAWN_TIMEOUT_S = 30.0
ZYGOTE_READY_TIMEOUT_S = (
    30.0  # the agent says it serves once its fork server is ready, or after this
)
_KILL_WAIT_S = 5.0
_SOCKET_BUFFER_BYTES = 256 << 10  # control frames are small
_MIN_PEER_TIMEOUT_S = 0.5
_MAX_PEER_TIMEOUT_S = 3600.0


class InsecureAgentError(ValueError):
    """An agent was asked to listen on TCP with no cluster token and without ``insecure``."""


@dataclass(eq=False)
class _Proc:
    addr: str
    pid: int
    name: str
    session: _Session
    popen: subprocess.Popen[bytes] | None = None
    pidfd: int = -1
    reason: str | None = None
    exited: asyncio.Event = field(default_factory=asyncio.Event)
    log_path: str | None = None


@dataclass(eq=False)
class _Session:
    """One authenticated client and the procs started for it."""

    peer: str
    sock: socket.socket
    io: AsyncStream  # the socket, or the TLS session over it
    client_addr: str = ""
    token: str = ""
    procs: dict[int, _Proc] = field(default_factory=dict)
    closed: bool = False
    peer_timeout_s: float | None = (
        None  # the client's liveness bound (its hello); None: no heartbeats
    )
    send_lock: asyncio.Lock = field(
        default_factory=asyncio.Lock
    )  # one frame at a time on the stream


class HostAgent:
    """Serves one machine: authenticates clients, starts and kills their procs.

    Args:
        listen: where clients connect (``tcp://HOST:PORT``, ``tcp:HOST:PORT``; port 0 picks one),
            or Monarch's alias ``DIAL_TO@BIND_TO`` (``tcp://10.0.0.2:26600@tcp://0.0.0.0:26600``:
            bound on the wildcard, advertised as 10.0.0.2 unless ``advertise`` is given; the
            reverse order ``tcp://0.0.0.0:26600@tcp://10.0.0.2:26600`` is taken too), or
            ``tcp://HOST:fdN`` (Monarch's: serve on the listening TCP socket inherited as file
            descriptor N), or
            ``ipc://PATH`` / ``unix:PATH``: a Unix socket (mode 0600) for clients of this
            machine, whose procs listen on Unix sockets too; it needs no token (a client that
            has one still proves it).
        advertise: the host (or ``tcp://HOST[:PORT]``) procs bind to and other hosts reach; None:
            the listen host, or this machine's hostname's address when listening on a wildcard.
        token: the cluster token clients must prove; None needs ``tls`` or ``insecure``.
        insecure: accept clients without authentication (a warning is logged).
        use_fork_server: fork procs from a pre-imported fork server (else a fresh interpreter each).
        tls: mutual TLS for clients and for the procs started here (they get these files, the
            host's identity); None: plain TCP; the default: ``MONARCH_TLS_*`` (``tls_from_env``).
        exit_on_shutdown: a client's ``HostMesh.shutdown()`` also ends :meth:`serve` (Monarch's
            ``run_worker_loop_forever``, whose process exits then); False (``monarch host
            serve``): the agent keeps serving other clients.

    Raises:
        InsecureAgentError: on TCP, neither a token nor TLS, and not ``insecure``.
        ValueError: a malformed address, or bad ``MONARCH_TLS_*`` files.
    """

    def __init__(
        self,
        listen: str,
        *,
        advertise: str | None = None,
        token: bytes | None,
        insecure: bool = False,
        use_fork_server: bool = True,
        tls: TlsConfig | str | None = "env",
        exit_on_shutdown: bool = False,
    ) -> None:
        listen, adv = _split_address(listen)
        advertise = advertise or adv
        # Monarch's tcp://HOST:fdN: serve on the listening socket the parent passed as fd N
        adopted = re.fullmatch(r"(?:tcp://|tcp:)(.+):fd(\d+)", listen.strip())
        self._listen_fd = int(adopted.group(2)) if adopted else None
        self.listen_addr = f"tcp:{adopted.group(1)}:0" if adopted else from_url(listen)
        # unix: an agent for clients of this machine only (Monarch's ipc://); its socket is
        # private to this user (0600), as every Unix socket of a job is
        self.unix = self.listen_addr.startswith("unix:")
        self.tls: TlsConfig | None = tls_from_env() if isinstance(tls, str) else tls
        if token is None and self.tls is None and not insecure and not self.unix:
            raise InsecureAgentError(
                f"refusing to listen on {self.listen_addr} with no cluster token and no TLS: set MONARCH_CLUSTER_TOKEN "
                "(every client must know it) or the TLS files (MONARCH_TLS_CA / MONARCH_TLS_CERT / MONARCH_TLS_KEY), "
                "or pass --insecure to accept any client that can connect"
            )
        if token is None and self.tls is None and not self.unix:
            log.warning(
                "host agent on %s is INSECURE: any client that can connect may start processes here",
                self.listen_addr,
            )
        self.token = token
        self.proc_host = "" if self.unix else _proc_host(self.listen_addr, advertise)
        self.use_fork_server = use_fork_server
        self.exit_on_shutdown = exit_on_shutdown
        self.address = ""  # tcp:HOST:PORT once bound
        self.sessions: set[_Session] = set()
        self.clients_served = 0
        self.refused = 0
        self._by_pid: dict[int, _Proc] = {}
        self._pending_auth = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sock: socket.socket | None = None
        self._zygote: ZygoteClient | None = None
        self._runtime_dir = ""
        self._proc_names = 0  # procs named so far (their names and Unix socket paths count them)
        self._stopped: asyncio.Event | None = None

    def __repr__(self) -> str:
        procs = sum(len(s.procs) for s in self.sessions)
        return f"<HostAgent {self.address or self.listen_addr!r} procs_on={self.proc_host} clients={len(self.sessions)} procs={procs}>"

    # -- life -------------------------------------------------------------------------------------
    async def serve(self, on_ready: Any = None) -> None:
        """Bind, then serve clients until :meth:`stop` (this coroutine's loop; kills every proc at the end).

        Args:
            on_ready: called with the bound address once clients can connect.
        """
        self._loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        if self._listen_fd is not None:
            self._sock = socket.socket(fileno=self._listen_fd)
            self._sock.listen(512)
        else:
            self._sock = bind_listener(self.listen_addr)
        self._sock.setblocking(False)
        if self.unix:
            os.chmod(self.listen_addr[5:], 0o600)
            self.address = self.listen_addr
        else:
            host, port = self._sock.getsockname()[:2]
            shown = self.proc_host if host in ("0.0.0.0", "::") else host
            self.address = f"tcp:[{shown}]:{port}" if ":" in shown else f"tcp:{shown}:{port}"
        self._runtime_dir = tempfile.mkdtemp(prefix=f"monarch-agent-{os.getpid()}-")
        os.chmod(self._runtime_dir, 0o700)
        if self.use_fork_server:
            try:
                # no idle preloads: they would run whenever the agent is quiet, which is when a
                # client attaches; a spawn that needs monarch.config asks for it (_start_procs)
                self._zygote = ZygoteClient.start(
                    on_exit=self._zygote_exit, on_lost=self._zygote_lost, idle_preload=False
                )
            except (OSError, ZygoteError) as exc:
                log.warning("no fork server, procs start from scratch: %s", exc)
        accept = asyncio.ensure_future(self._accept_loop())
        try:
            if self._zygote is not None:
                # ready means ready to spawn: the fork server's imports are done before the
                # agent says it serves (a client that connects meanwhile is served at once)
                try:
                    await self._loop.run_in_executor(
                        None, self._zygote.wait_ready, ZYGOTE_READY_TIMEOUT_S
                    )
                except ZygoteError as exc:
                    log.warning("fork server not ready, serving anyway: %s", exc)
            log.info("host agent serving on %s (procs on %s)", self.address, self.proc_host)
            if on_ready is not None:
                on_ready(self.address)
            await self._stopped.wait()
        finally:
            accept.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await accept
            self._sock.close()
            if self.unix:
                with contextlib.suppress(OSError):
                    os.unlink(self.listen_addr[5:])
            for s in list(self.sessions):
                await self._end_session(s, "the agent is stopping")
            if self._zygote is not None:
                self._zygote.close()
            shutil.rmtree(self._runtime_dir, ignore_errors=True)

    def stop(self) -> None:
        """End :meth:`serve` (any thread)."""
        if self._loop is not None and self._stopped is not None:
            self._loop.call_soon_threadsafe(self._stopped.set)

    async def _accept_loop(self) -> None:
        assert self._loop is not None and self._sock is not None
        while True:
            conn, peer = await self._loop.sock_accept(self._sock)
            if self._pending_auth >= MAX_UNAUTHENTICATED:
                self.refused += 1
                log.error("refused %s: %d connections are authenticating", peer, self._pending_auth)
                conn.close()
                continue
            shown = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "a local process"
            self._loop.create_task(self._client(conn, shown))

    async def _client(self, conn: socket.socket, peer: str) -> None:
        assert self._loop is not None
        loop = self._loop
        conn.setblocking(False)
        self._pending_auth += 1
        try:
            io = await agent_wire.accept_client(
                loop, conn, token=self.token, tls=self.tls, timeout_s=AUTH_TIMEOUT_S
            )
            async with asyncio.timeout(AUTH_TIMEOUT_S):
                hello = await agent_wire.recv_frame(io)
            if hello.get("op") != "hello" or not isinstance(hello.get("client"), str):
                raise ProtocolError("the first request is not a hello")
        except (OSError, ProtocolError, TimeoutError, ConnectionError) as exc:
            self.refused += 1
            log.warning("refused a client from %s: %s", peer, exc or type(exc).__name__)
            conn.close()
            return
        finally:
            self._pending_auth -= 1
        session = _Session(peer, conn, io, client_addr=hello["client"])
        if self.token is None:
            session.token = str(hello.get("token") or "")
        session.peer_timeout_s = _peer_timeout(hello.get("peer_timeout_s"))
        if session.peer_timeout_s is not None:
            # the kernel's bounds too: pings unacknowledged on a cut link end it within the bound
            tune_socket(
                conn, buffer_bytes=_SOCKET_BUFFER_BYTES, peer_timeout_s=session.peer_timeout_s
            )
        self.sessions.add(session)
        self.clients_served += 1
        log.info("client %s (%s) attached", session.client_addr, peer)
        why = "disconnected"
        pinger: asyncio.Task[None] | None = None
        try:
            await self._send(
                session,
                {
                    "op": "hello",
                    "hostname": socket.gethostname(),
                    "ip": self.proc_host,
                    "pid": os.getpid(),
                },
            )
            if session.peer_timeout_s is not None:
                pinger = loop.create_task(self._ping(session, session.peer_timeout_s / 4))
            while True:
                try:
                    async with asyncio.timeout(session.peer_timeout_s):
                        msg = await agent_wire.recv_frame(io)
                except TimeoutError:
                    why = f"went silent (no heartbeat for {session.peer_timeout_s} s): partitioned or hung"
                    break
                await self._handle(session, msg)
        except (ConnectionError, OSError) as exc:
            why = f"disconnected ({exc})" if str(exc) else "disconnected"
        except ProtocolError as exc:
            why = f"sent a bad frame: {exc}"
        finally:
            if pinger is not None:
                pinger.cancel()
            await self._end_session(session, why)

    async def _ping(self, session: _Session, interval_s: float) -> None:
        """Tell the client we are alive every ``interval_s`` (it bounds our silence)."""
        with contextlib.suppress(OSError, ConnectionError):
            while not session.closed:
                await asyncio.sleep(interval_s)  # the heartbeat period, not a synchronisation
                await self._send(session, {"op": "ping"})

    async def _handle(self, session: _Session, msg: dict[str, Any]) -> None:
        op = msg["op"]
        if op == "spawn":
            rid = msg.get("id")
            try:
                procs = await self._spawn(
                    session,
                    int(msg.get("count", 1)),
                    str(msg.get("name", "procs")),
                    dict(msg.get("env") or {}),
                )
            except Exception as exc:
                await self._send(
                    session, {"op": "error", "id": rid, "error": f"{type(exc).__name__}: {exc}"}
                )
                return
            log.info(
                "started %d procs for client %s: pids %s",
                len(procs),
                session.client_addr,
                [p["pid"] for p in procs],
            )
            await self._send(session, {"op": "spawned", "id": rid, "procs": procs})
        elif op == "ping":
            pass  # any frame is a heartbeat: the recv loop's timeout was reset by reading it
        elif op == "shutdown":  # the client's HostMesh.shutdown(), after it stopped its procs
            if self.exit_on_shutdown:
                log.info("client %s shut this host down: the agent stops", session.client_addr)
                self.stop()
        elif op == "kill":
            for p in list(session.procs.values()):
                if p.addr in set(msg.get("addrs") or []):
                    _sigkill(p.pid)
        else:
            raise ProtocolError(f"unknown request {op!r}")

    async def _send(self, session: _Session, msg: dict[str, Any]) -> None:
        if session.closed:
            return
        async with session.send_lock:
            await session.io.sendall(agent_wire.encode(msg))

    # -- procs ------------------------------------------------------------------------------------
    async def _spawn(
        self, session: _Session, count: int, name: str, extra_env: dict[str, str]
    ) -> list[dict[str, Any]]:
        if not 1 <= count <= 4096:
            raise ValueError(f"count must be in 1..4096, got {count}")
        assert self._loop is not None
        env = dict(os.environ)
        env.update({str(k): str(v) for k, v in extra_env.items()})
        env["MONARCH_RUNTIME_DIR"] = self._runtime_dir
        env["MONARCH_ROOT_ADDR"] = session.client_addr
        token = self.token.decode() if self.token is not None else session.token
        if token:
            env["MONARCH_CLUSTER_TOKEN"] = token
        for var in (ENV_CA, ENV_CERT, ENV_KEY):  # a client's paths name files of its own machine
            env.pop(var, None)
        if self.tls is not None:
            env.update(self.tls.env())  # procs here present this host's certificate
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        env.pop("MONARCH_PYTHON_EXECUTABLE", None)
        try:
            rank_base = int(env.pop(logs.ENV_RANK_BASE, "0"))
        except ValueError:
            rank_base = 0
        specs = []
        for k in range(count):
            pname = f"{name}/{socket.gethostname()}/{self._proc_names + k}"
            proc_env = dict(env)
            proc_env[logs.ENV_FILE] = logs.new_log_path(pname)  # this host's log file of the proc
            proc_env[logs.ENV_RANK] = str(rank_base + k)
            specs.append((pname, proc_env))
        self._proc_names += count
        started: list[_Proc] = []
        try:
            await self._loop.run_in_executor(None, self._start_procs, session, specs, started)
        finally:
            for proc in started:  # those started before a failure too: the session owns them
                self._register(proc)
        return [{"addr": p.addr, "pid": p.pid, "name": p.name} for p in started]

    def _start_procs(
        self, session: _Session, specs: list[tuple[str, dict[str, str]]], started: list[_Proc]
    ) -> None:
        """Bind each proc's socket and fork them all, appending each to ``started`` (an executor
        thread: the fork server's answers block). Every request is sent before the first answer
        is awaited, so the fork server forks while this thread prepares the next one.

        Raises:
            ValueError: a request too large for the fork server.
            OSError: a socket could not be bound or an interpreter not started.
        """
        zygote = self._zygote if self._zygote is not None and self._zygote.alive else None
        # a proc whose environment carries settings imports monarch.config at start: the fork
        # server imports it once, before the first of them forks
        preload = (
            ("monarch.config",) if any(k.upper() in SETTING_VARIABLES for k in specs[0][1]) else ()
        )
        cwd = os.getcwd()
        # (name, env, listening socket, address, fork request id) of each proc not started yet
        pending: list[tuple[str, dict[str, str], socket.socket, str, int | None]] = []
        try:
            for name, env in specs:
                lsock, addr = self._proc_socket()
                pending.append((name, env, lsock, addr, None))
                if zygote is not None:
                    try:
                        rid = zygote.submit(
                            _proc_argv(session, name), env, cwd, lsock.fileno(), preload=preload
                        )
                    except ZygoteError as exc:
                        log.warning("fork server failed, starting procs from scratch: %s", exc)
                        zygote = None
                    else:
                        pending[-1] = (name, env, lsock, addr, rid)
            while pending:
                name, env, lsock, addr, req = pending[0]
                pid, popen = 0, None
                if req is not None and zygote is not None:
                    try:
                        pid = zygote.result(req, SPAWN_TIMEOUT_S)
                    except ZygoteRefused as exc:
                        log.info("starting %s from scratch: %s", name, exc)
                    except ZygoteError as exc:
                        log.warning("fork server failed, starting %s from scratch: %s", name, exc)
                        zygote = None
                    pending[0] = (name, env, lsock, addr, None)  # collected
                if not pid:
                    argv = [
                        str(lsock.fileno()) if a == "{fd}" else a for a in _proc_argv(session, name)
                    ]
                    cmd = [sys.executable, "-m", "monarch._mesh.proc_main", *argv]
                    popen = subprocess.Popen(cmd, pass_fds=[lsock.fileno()], env=env, cwd=cwd)
                    pid = popen.pid
                pending.pop(0)
                lsock.close()  # the proc has its own copy
                started.append(
                    _Proc(addr, pid, name, session, popen, log_path=env.get(logs.ENV_FILE))
                )
        finally:
            for _name, _env, lsock, _addr, req in pending:  # not started (an error above)
                if req is not None and self._zygote is not None:
                    self._zygote.abandon(req)  # a proc it forks anyway is killed, unreported
                lsock.close()

    def _proc_socket(self) -> tuple[socket.socket, str]:
        """A new proc's listening socket, bound on the proc host (a Unix agent's: in its
        private folder), and its address."""
        if self.unix:
            path = os.path.join(self._runtime_dir, f"{self._proc_names}-{os.urandom(4).hex()}.sock")
            lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        else:
            family, _ = parse_address(f"tcp:{self.proc_host}:0")
            lsock = socket.socket(family, socket.SOCK_STREAM)
        try:
            if self.unix:
                lsock.bind(path)
                addr = f"unix:{path}"
            else:
                lsock.bind((self.proc_host.strip("[]"), 0))
                host, port = lsock.getsockname()[:2]
                addr = f"tcp:[{host}]:{port}" if ":" in host else f"tcp:{host}:{port}"
            lsock.listen(512)
        except BaseException:
            lsock.close()
            raise
        return lsock, addr

    def _register(self, proc: _Proc) -> None:
        """Own a started proc and watch its exit (loop thread)."""
        assert self._loop is not None
        pid = proc.pid
        proc.session.procs[pid] = proc
        self._by_pid[pid] = proc
        if proc.popen is not None:
            try:
                proc.pidfd = os.pidfd_open(pid)
                self._loop.add_reader(proc.pidfd, self._popen_exited, proc)
            except OSError:
                proc.pidfd = -1
        elif self._zygote is not None and (status := self._zygote.exit_status(pid)) is not None:
            self._exited(pid, status)  # it ended before we registered it

    def _zygote_exit(self, pid: int, status: int) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._exited, pid, status)

    def _zygote_lost(self, pids: list[int]) -> None:
        if self._loop is not None:
            for pid in pids:
                self._loop.call_soon_threadsafe(self._exited, pid, None)

    def _popen_exited(self, proc: _Proc) -> None:
        assert self._loop is not None
        with contextlib.suppress(OSError, ValueError):
            self._loop.remove_reader(proc.pidfd)
        os.close(proc.pidfd)
        proc.pidfd = -1
        status = None
        with contextlib.suppress(ChildProcessError):
            got, st = os.waitpid(proc.pid, os.WNOHANG)
            if got:
                status = st
                assert proc.popen is not None
                proc.popen.returncode = os.waitstatus_to_exitcode(st)
        self._exited(proc.pid, status)

    def _exited(self, pid: int, status: int | None) -> None:
        proc = self._by_pid.pop(pid, None)
        if proc is None:
            return
        if self._zygote is not None:
            self._zygote.forget(pid)
        proc.session.procs.pop(pid, None)
        how = describe_status(status) if status is not None else "exited (its fork server died)"
        failed = status is None or not (os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0)
        note = logs.failure_note(proc.log_path) if failed else ""
        if not failed:
            logs.discard_log(proc.log_path)
        proc.reason = f"{how} (proc {proc.name}, pid {pid}, host {socket.gethostname()} {self.proc_host}{note})"
        proc.exited.set()
        session = proc.session
        if not session.closed:
            assert self._loop is not None
            self._loop.create_task(self._report(session, proc))

    async def _report(self, session: _Session, proc: _Proc) -> None:
        with contextlib.suppress(OSError, ConnectionError):
            await self._send(
                session, {"op": "exited", "addr": proc.addr, "pid": proc.pid, "reason": proc.reason}
            )

    async def _end_session(self, session: _Session, why: str) -> None:
        if session.closed:
            return
        session.closed = True
        self.sessions.discard(session)
        session.sock.close()
        procs = list(session.procs.values())
        for p in procs:
            _sigkill(p.pid)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(
                _KILL_WAIT_S
            ):  # all of them together: shutdown stays bounded
                for p in procs:
                    await p.exited.wait()
        log.info(
            "client %s %s; killed its %d procs",
            session.client_addr or session.peer,
            why,
            len(procs),
        )


def _proc_argv(session: _Session, name: str) -> list[str]:
    """A proc's arguments (``proc_main``'s); ``{fd}`` stands for its listening socket."""
    return ["--fd", "{fd}", "--owner", session.client_addr, "--name", name]


def _peer_timeout(value: Any) -> float | None:
    """The client's liveness bound from its hello, within sane limits; None when absent (no heartbeats)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return min(max(float(value), _MIN_PEER_TIMEOUT_S), _MAX_PEER_TIMEOUT_S)


def _sigkill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _proc_host(listen: str, advertise: str | None) -> str:
    if advertise:
        adv = advertise.strip()
        if adv.startswith(("tcp://", "tcp:")):
            adv = adv.split(":", 1)[1].lstrip("/")
            if adv.count(":") == 1 or adv.startswith("["):
                adv = adv.rsplit(":", 1)[0]
        return adv.strip("[]")
    _, (host, _port) = parse_address(listen)
    if host in ("0.0.0.0", "", "::"):
        return socket.gethostbyname(socket.gethostname())
    return str(host)


def token_from_config() -> bytes | None:
    """The cluster token: ``MONARCH_CLUSTER_TOKEN``, else ``monarch.config``'s; None when unset.

    Raises:
        ConfigError: a bad setting in the environment.
    """
    raw = os.environ.get("MONARCH_CLUSTER_TOKEN")
    if raw:
        return raw.encode()
    from ..config import get_global_config  # the token file / configure() of monarch.config

    tok = get_global_config().cluster_token
    return tok.get_secret_value().encode() if tok is not None else None


def tls_from_options(ca: str | None, cert: str | None, key: str | None) -> TlsConfig | None:
    """The agent's TLS files: the given paths (``monarch host serve --tls-*``), else the
    ``tls_ca`` / ``tls_cert`` / ``tls_key`` settings of ``monarch.config`` (``MONARCH_TLS_*``).

    Args:
        ca: PEM CA bundle clients' certificates must be signed by; None: not given.
        cert: this host's PEM certificate chain (it may hold the key); None: not given.
        key: the PEM private key when ``cert`` does not hold it; None: not given.

    Returns:
        The configuration, or None when neither the arguments nor the settings name TLS files.

    Raises:
        ValueError: a CA without a certificate (or the reverse), or a missing or invalid file.
        ConfigError: a bad setting in the environment.
    """
    if ca is None and cert is None and key is None:
        from ..config import get_global_config

        cfg = get_global_config()
        ca, cert, key = cfg.tls_ca, cfg.tls_cert, cfg.tls_key
        if ca is None and cert is None and key is None:
            return None
        given = "the tls_ca / tls_cert / tls_key settings (MONARCH_TLS_CA / _CERT / _KEY)"
    else:
        given = "--tls-ca / --tls-cert / --tls-key"
    if ca is None or cert is None:
        raise ValueError(
            f"mutual TLS needs both a CA bundle and a certificate ({given}; the key unless the certificate file holds it)"
        )
    return TlsConfig(ca, cert, key)


def _split_address(address: str) -> tuple[str, str | None]:
    """Monarch's alias form ``DIAL_TO@BIND_TO`` (or ``BIND@ADVERTISE`` with a wildcard bind):
    where to bind, and what to advertise (see ``split_alias``)."""
    return split_alias(address)


def run_worker_loop_forever(
    *, address: str, ca: Any = None, private_key: Any = None, insecure: bool = False
) -> None:
    """Serve this machine as a host agent (Monarch's ``run_worker_loop_forever``): clients
    ``attach_to_workers`` to it and spawn procs here. It returns when a client shuts its host
    mesh down (``HostMesh.shutdown()``), as Monarch's worker loop does, or never.

    Args:
        address: ``tcp://HOST:PORT`` to listen on, Monarch's alias
            ``tcp://ADVERTISE:PORT@tcp://BIND:PORT`` (see ``HostAgent``), or ``ipc://PATH``.
        ca: the CA bundle (a path, or PEM bytes) clients' certificates must be signed by: mutual
            TLS. None or ``"trust_all_connections"``: no files given here (``MONARCH_TLS_*``
            applies when set; clients are authenticated with the cluster token,
            ``MONARCH_CLUSTER_TOKEN``, which also runs inside TLS when both are set).
        private_key: with ``ca``: this host's private key and certificate chain, one PEM file (a
            path or bytes) or a ``(certificate, key)`` pair; procs started here present it too.
        insecure: serve with neither a cluster token nor TLS (any client that can connect may
            start processes).

    Raises:
        InsecureAgentError: neither a cluster token nor TLS is configured and not ``insecure``.
        ValueError: a malformed address, or ``ca`` without ``private_key`` (or the reverse), or a
            missing or invalid TLS file.
        OSError: the address cannot be bound.
    """
    tls = tls_from_monarch(ca, private_key)
    bind, advertise = _split_address(address)
    agent = HostAgent(
        bind,
        advertise=advertise,
        token=token_from_config(),
        insecure=insecure,
        tls=tls,
        exit_on_shutdown=True,
    )
    asyncio.run(agent.serve())


def start_worker_loop_forever(
    *, address: str, ca: Any = None, private_key: Any = None, insecure: bool = False
) -> Future[str]:
    """Start a host agent on a daemon thread of this process (Monarch's ``start_worker_loop_forever``).

    Args:
        address, ca, private_key, insecure: as :func:`run_worker_loop_forever`.

    Returns:
        A future of the agent's bound address (``tcp:HOST:PORT``), set once clients can connect,
        or failed with what stopped it from starting.

    Raises:
        InsecureAgentError: neither a cluster token nor TLS is configured and not ``insecure``.
        ValueError: as :func:`run_worker_loop_forever`.
    """
    tls = tls_from_monarch(ca, private_key)
    bind, advertise = _split_address(address)
    agent = HostAgent(
        bind,
        advertise=advertise,
        token=token_from_config(),
        insecure=insecure,
        tls=tls,
        exit_on_shutdown=True,
    )
    fut: Future[str] = Future()

    def run() -> None:
        try:
            asyncio.run(agent.serve(on_ready=fut.set_result))
        except BaseException as exc:
            if not fut.done():
                fut.set_exception(exc)

    threading.Thread(target=run, name="monarch host agent", daemon=True).start()
    return fut
