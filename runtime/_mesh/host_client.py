"""The client's side of host agents: connections to them, and the procs they started for us.

:class:`AgentLink` is one authenticated connection to one agent (``agent_wire.py``): requests
from any thread wait for their answer; a reader thread takes the agent's events (a proc exited)
to the router, the one source of truth for liveness. :class:`RemoteHosts` (one per runtime, built
by the composition root) holds the links and which agent started which proc, and stops them.

Liveness of a remote proc: its link's EOF (a killed process's kernel closes its sockets: the
router learns within milliseconds), its agent's exit report (which names the cause), the loss of
its agent's connection (the whole host: every proc of it is declared dead at once, naming the
host), and its heartbeats, watched by the router (a partitioned or frozen host). The agent's
connection has heartbeats of its own (``ping`` frames both ways every ``peer_timeout_s / 4``): an
agent silent for ``peer_timeout_s`` (its host partitioned or hung, or the agent alone stopped)
loses its host the same way, and the agent ends a silent client's session (kills its procs).
"""

from __future__ import annotations

import itertools
import logging
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from .._core.errors import ConnectError, ProtocolError, SupervisionError
from .._core.future import Future
from .._transport.address import from_url, parse_address, tune_socket
from .._transport.auth import BlockingStream
from .._transport.messages import ControlOp
from .._transport.tls import ENV_CA, ENV_CERT, ENV_KEY, TlsConfig
from . import agent_wire, logs
from .router import Router

__all__ = [
    "AgentLink",
    "RemoteHosts",
    "local_address_towards",
    "requested_listen",
    "set_requested_listen",
]

log = logging.getLogger("monarch.host_client")

CONNECT_TIMEOUT_S = 10.0
REQUEST_TIMEOUT_S = 60.0
_SOCKET_BUFFER_BYTES = 256 << 10  # control frames are small
_KILL_WAIT_S = 5.0  # after the grace period: how long killed remote procs may take to be reported

_requested_listen: list[str] = []


def set_requested_listen(addr: str) -> None:
    """Make the client runtime, when it starts, listen on ``addr`` (``enable_transport``)."""
    _requested_listen[:] = [addr]


def requested_listen() -> str | None:
    """The address :func:`set_requested_listen` asked for, or None."""
    return _requested_listen[0] if _requested_listen else None


def local_address_towards(addr: str) -> str:
    """This machine's IP address on the route to the TCP address ``addr`` (no packet is sent).

    Raises:
        ValueError: ``addr`` is not a TCP address.
        OSError: there is no route.
    """
    family, (host, port) = parse_address(from_url(addr))
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.connect((socket.gethostbyname(host) if family == socket.AF_INET else host, port or 9))
        return str(s.getsockname()[0])


def _attach_timeout_s() -> float:
    """Monarch's ``mesh_attach_config_timeout``: how long an agent not yet listening is dialed."""
    from .._config_knobs import parse_duration
    from ..config import get_global_config

    return parse_duration(get_global_config().mesh_attach_config_timeout) / 1e9


def _dial(family: int, sockaddr: Any, addr: str) -> socket.socket:
    """A connected socket to the agent at ``addr``, dialed again while it refuses (an agent
    started at the same time as its client is not listening yet) until the attach timeout."""
    deadline: float | None = None  # read at the first refusal: monarch.config imports pydantic
    pause = 0.02
    while True:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.settimeout(CONNECT_TIMEOUT_S)
            sock.connect(sockaddr)
            return sock
        except (ConnectionRefusedError, FileNotFoundError) as exc:
            sock.close()
            if deadline is None:
                deadline = time.monotonic() + _attach_timeout_s()
            left = deadline - time.monotonic()
            if left <= 0:
                raise ConnectionError(f"{exc} (still after mesh_attach_config_timeout)") from exc
            time.sleep(min(pause, left))  # a retry back-off, bounded by the deadline
            pause = min(pause * 2, 0.5)
        except BaseException:
            sock.close()
            raise


class AgentLink:
    """One connection to one host agent; connected on a helper thread.

    Args:
        addr: the agent's address (``tcp://HOST:PORT`` or ``tcp:HOST:PORT``).
        token: the cluster token the agent must know (and we prove).
        client_addr: this client's listening address, which the agent gives its procs.
        on_event: ``on_event(link, msg)`` for each event (reader thread).
        on_lost: ``on_lost(link, reason)`` once when the connection ends (reader thread).
        tls: this client's TLS files: the agent must serve mutual TLS with a certificate of the
            same CA; None: the agent must not use TLS.
        peer_timeout_s: liveness bound, seconds: both sides send a ``ping`` every quarter of it;
            an agent silent for three quarters of it is lost within the bound (``on_lost`` with
            "no heartbeat"); the agent ends our session when we are silent for all of it. None:
            no heartbeats (nor timeouts).

    Attributes:
        ready: completes with the agent's hello (``hostname``, ``ip``, ``pid``) or fails with
            ``ConnectError``.
    """

    def __init__(
        self,
        addr: str,
        *,
        token: bytes | None,
        client_addr: str,
        on_event: Callable[[AgentLink, dict[str, Any]], None],
        on_lost: Callable[[AgentLink, str], None],
        tls: TlsConfig | None = None,
        peer_timeout_s: float | None = None,
    ) -> None:
        self.addr = from_url(addr)
        self.token = token
        self.tls = tls
        self.peer_timeout_s = peer_timeout_s
        self.last_heard = time.monotonic()  # when the agent last sent anything (any frame)
        self.client_addr = client_addr
        self.ready: Future[dict[str, Any]] = Future()
        self.hostname = ""
        self.lost: str | None = None
        self._on_event = on_event
        self._on_lost = on_lost
        self._sock: socket.socket | None = None
        self._io: BlockingStream | None = None  # the socket, or the TLS session over it
        self._send_lock = threading.Lock()
        self._cond = threading.Condition()
        self._answers: dict[int, dict[str, Any]] = {}
        self._ids = itertools.count(1)
        self._silent: str | None = None  # set by the heartbeat thread before it ends the connection
        self._stop = threading.Event()  # the link is closed or lost: the heartbeat thread ends
        threading.Thread(target=self._run, name=f"monarch agent {self.addr}", daemon=True).start()

    def __repr__(self) -> str:
        state = (
            f"lost ({self.lost})" if self.lost else "ready" if self.ready.done() else "connecting"
        )
        return f"<AgentLink {self.addr!r} host={self.hostname!r} {state}>"

    def _run(self) -> None:
        try:
            hello = self._connect()
        except (OSError, ProtocolError, ConnectionError) as exc:
            err = ConnectError(
                # Monarch's words for this phase of its attach, which users' code matches on
                f"attach failed: config push failed during attach: cannot attach to the host "
                f"agent at {self.addr}: {exc or type(exc).__name__}"
            )
            err.__cause__ = exc
            self.lost = str(err)
            self.ready.set_exception(err)
            self._on_lost(self, str(err))
            return
        self.hostname = str(hello.get("hostname", ""))
        self.last_heard = time.monotonic()
        if self.peer_timeout_s is not None:
            threading.Thread(
                target=self._heartbeat, name=f"monarch agent heartbeat {self.addr}", daemon=True
            ).start()
        self.ready.set_result(hello)
        reason = "connection closed"
        try:
            assert self._io is not None
            while True:
                msg = agent_wire.recv_frame_blocking(self._io)
                self.last_heard = time.monotonic()
                rid = msg.get("id")
                if msg["op"] == "ping":
                    continue
                if msg["op"] in ("spawned", "error") and isinstance(rid, int):
                    with self._cond:
                        self._answers[rid] = msg
                        self._cond.notify_all()
                else:
                    self._on_event(self, msg)
        except (OSError, ProtocolError, ConnectionError) as exc:
            reason = str(exc) or type(exc).__name__
        finally:
            self._stop.set()
            if self._silent is not None:
                reason = self._silent  # we ended it: the agent went silent
            with self._cond:
                self.lost = f"host {self.hostname or '?'} (agent {self.addr}) lost: {reason}"
                self._cond.notify_all()
            self._on_lost(self, self.lost)

    def probe(self) -> str | None:
        """What the router's heartbeat check of a proc of this host should conclude when the
        proc's own beats are late (loop thread): None while this host itself is silent or lost
        (its loss is being reported, naming the host), else ``"?"`` (no OS view from here: the
        proc alone is silent, so it is hung)."""
        if self.lost is not None:
            return None
        if (
            self.peer_timeout_s is not None
            and time.monotonic() - self.last_heard > self.peer_timeout_s / 2
        ):
            return None
        return "?"

    def _heartbeat(self) -> None:
        """Ping the agent every quarter of ``peer_timeout_s``; end the link once it has been
        silent for three quarters of it, which this check (every quarter) sees within
        ``peer_timeout_s`` of the agent's last frame (its own thread: the reader blocks in ``recv``)."""
        assert self.peer_timeout_s is not None
        timeout_s = self.peer_timeout_s
        interval = timeout_s / 4
        last_check = time.monotonic()
        while not self._stop.wait(interval):
            now = time.monotonic()
            if now - last_check > 2 * interval + 0.5:
                # this thread was starved (a loaded machine): what it did not see in time says
                # nothing about the agent; start its clock again
                self.last_heard = now
            last_check = now
            silent = now - self.last_heard
            # checked every interval: a limit one interval short of the bound declares the loss
            # at most peer_timeout_s after the agent's last frame (3 pings missed at the least)
            if silent > timeout_s - interval:
                self._silent = (
                    f"no heartbeat for {silent:.1f} s (bound {timeout_s} s): partitioned or hung"
                )
                log.error("host agent %s (%s) %s", self.addr, self.hostname, self._silent)
                self.close()  # wakes the reader, which reports the loss
                return
            try:
                self.send({"op": "ping"})
            except SupervisionError:
                return  # lost meanwhile: the reader reports it

    def _connect(self) -> dict[str, Any]:
        family, sockaddr = parse_address(self.addr)
        sock = _dial(family, sockaddr, self.addr)
        try:
            if self.peer_timeout_s is not None:
                # kernel bounds too: unacknowledged pings on a cut link end it within the bound
                tune_socket(
                    sock, buffer_bytes=_SOCKET_BUFFER_BYTES, peer_timeout_s=self.peer_timeout_s
                )
            if family != socket.AF_UNIX:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            io, with_token = agent_wire.dial_agent(
                sock, token=self.token, tls=self.tls, addr=self.addr
            )
            hello: dict[str, Any] = {"op": "hello", "client": self.client_addr}
            if self.peer_timeout_s is not None:
                hello["peer_timeout_s"] = (
                    self.peer_timeout_s
                )  # the agent pings us and bounds our silence
            if not with_token:
                if self.tls is None and family != socket.AF_UNIX:  # Unix: the socket is 0600
                    log.warning("the host agent at %s is insecure (no authentication)", self.addr)
                if self.token is not None:
                    hello["token"] = (
                        self.token.decode()
                    )  # the procs it starts for us need it (inside TLS, if any)
            io.sendall(agent_wire.encode(hello))
            answer = agent_wire.recv_frame_blocking(io)
            if answer.get("op") != "hello":
                raise ProtocolError(f"unexpected answer to hello: {answer.get('op')!r}")
            sock.settimeout(None)
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        self._io = io
        return answer

    def request(self, msg: dict[str, Any], timeout_s: float = REQUEST_TIMEOUT_S) -> dict[str, Any]:
        """Send ``msg`` and wait for its answer (any thread but the reader).

        Raises:
            SupervisionError: the agent is lost, or did not answer within ``timeout_s``.
        """
        hello = self.ready.get(timeout_s)
        del hello
        rid = next(self._ids)
        self.send({**msg, "id": rid})
        with self._cond:
            if not self._cond.wait_for(
                lambda: rid in self._answers or self.lost is not None, timeout_s
            ):
                raise SupervisionError(
                    f"host agent {self.addr} did not answer {msg['op']!r} within {timeout_s} s"
                )
            if rid not in self._answers:
                raise SupervisionError(str(self.lost))
            return self._answers.pop(rid)

    def send(self, msg: dict[str, Any]) -> None:
        """Send ``msg`` with no answer expected (any thread).

        Raises:
            SupervisionError: the agent is lost.
        """
        if self._io is None or self.lost is not None:
            raise SupervisionError(str(self.lost or f"host agent {self.addr} is not connected"))
        try:
            with self._send_lock:
                self._io.sendall(agent_wire.encode(msg))
        except OSError as exc:
            raise SupervisionError(f"host agent {self.addr} lost: {exc}") from exc

    def close(self) -> None:
        """Disconnect: the agent kills every proc it started for us."""
        self._stop.set()
        sock = self._sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()


class RemoteHosts:
    """The agents this client attached to and the procs they started (built by the runtime).

    Args:
        router: this process's router (links to the procs, liveness).
        token: the cluster token (agents and procs).
        child_env: the environment every proc gets (the job's settings), sent to the agents.
        supervisor_expects: told which procs are about to exit on purpose.
    """

    def __init__(
        self,
        router: Router,
        *,
        token: bytes | None,
        child_env: dict[str, str],
        supervisor_expects: Callable[[list[str]], None],
    ) -> None:
        self.router = router
        self.token = token
        self.child_env = child_env
        self._expect = supervisor_expects
        self.links: dict[str, AgentLink] = {}
        self.procs: dict[str, AgentLink] = {}  # proc address -> the agent that started it
        self.exited: dict[str, threading.Event] = {}
        self.pids: dict[str, int] = {}  # proc address -> its pid on its host
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<RemoteHosts agents={len(self.links)} procs={len(self.procs)}>"

    def attach(self, addr: str) -> AgentLink:
        """The link to the agent at ``addr`` (made on first use; connects in the background)."""
        key = from_url(addr)
        with self._lock:
            link = self.links.get(key)
            if link is None or link.lost is not None:
                tls = getattr(
                    self.router.transport, "tls", None
                )  # the socket transport's TLS files, if any
                link = AgentLink(
                    key,
                    token=self.token,
                    client_addr=self.router.addr,
                    on_event=self._event,
                    on_lost=self._lost,
                    tls=tls,
                    peer_timeout_s=self.router.limits.peer_timeout_s,
                )
                self.links[key] = link
            return link

    def spawn(self, link: AgentLink, count: int, name: str, env: dict[str, str]) -> list[str]:
        """Start ``count`` procs on ``link``'s host; their addresses (blocks for the agent's answer).

        The client dials each proc at once, so its link is the proc's first (the owner link).

        Raises:
            SupervisionError: the agent is lost or refused.
        """
        local = (
            "MONARCH_RUNTIME_DIR",
            "MONARCH_ROOT_ADDR",
            "MONARCH_CLUSTER_TOKEN",
            ENV_CA,
            ENV_CERT,
            ENV_KEY,
        )  # the agent sets its own
        child_env = {k: v for k, v in self.child_env.items() if k not in local}
        child_env.update(env)
        if logs.ENV_SINK not in child_env:  # the procs' output comes to this client's log sink
            child_env[logs.ENV_SINK] = logs.client_sink(self.router).address
        answer = link.request({"op": "spawn", "count": count, "name": name, "env": child_env})
        if answer["op"] == "error":
            raise SupervisionError(
                f"host agent {link.addr} ({link.hostname}) could not spawn procs: {answer.get('error')}"
            )
        addrs = [str(p["addr"]) for p in answer["procs"]]
        for p in answer["procs"]:
            logs.note_proc(str(link.hostname), int(p.get("pid") or 0), str(p["addr"]))
        for p in answer["procs"]:
            with self._lock:
                a = str(p["addr"])
                self.procs[a] = link
                self.pids[a] = int(p.get("pid") or 0)
                self.exited[a] = threading.Event()
            self.router.connection(a)  # dial now: the proc's owner link
            self.router.call_on_loop(self.router.watch, a, link.probe)
        return addrs

    def _event(self, link: AgentLink, msg: dict[str, Any]) -> None:
        if msg.get("op") == "exited":
            addr = str(msg.get("addr"))
            reason = str(msg.get("reason") or "exited")
            ev = self.exited.get(addr)
            if ev is not None:
                ev.set()
            self.router.call_on_loop(self.router.mark_dead, addr, reason)

    def _lost(self, link: AgentLink, reason: str) -> None:
        with self._lock:
            mine = [a for a, lk in self.procs.items() if lk is link]
        for a in mine:
            ev = self.exited.get(a)
            if ev is not None:
                ev.set()
            self.router.call_on_loop(self.router.mark_dead, a, reason)

    def where_of(self, addr: str) -> tuple[str, int] | None:
        """The host name and pid (0: unknown) of the remote proc at ``addr``; None when it is not ours."""
        link = self.procs.get(addr)
        if link is None:
            return None
        return link.hostname or link.addr, self.pids.get(addr, 0)

    def kill(self, addrs: list[str]) -> None:
        """Ask the agents of these remote procs to SIGKILL them (no wait; their exits are
        reported). Procs whose host is lost are skipped: nothing can reach them."""
        by_link: dict[AgentLink, list[str]] = {}
        for a in addrs:
            link = self.procs.get(a)
            if link is not None:
                by_link.setdefault(link, []).append(a)
        for link, some in by_link.items():
            try:
                link.send({"op": "kill", "addrs": some})
            except SupervisionError:
                continue

    def owns(self, addr: str) -> bool:
        """Whether ``addr`` is a proc an agent started for us."""
        return addr in self.procs

    def alive(self) -> list[str]:
        """Remote procs not known to have exited."""
        return [
            a for a, ev in self.exited.items() if not ev.is_set() and not self.router.dead_reason(a)
        ]

    def stop(self, addrs: list[str], timeout_s: float) -> Future[None]:
        """Ask remote procs to exit (their actors run ``__cleanup__``); the agent kills what is
        left after ``timeout_s``. Completes when each has exited or its host is lost."""
        mine = [a for a in addrs if a in self.procs]
        self._expect(mine)
        for a in mine:
            if not self.router.dead_reason(a):
                try:
                    self.router.send_control(a, ControlOp.EXIT)
                except Exception:
                    pass
        fut: Future[None] = Future()

        def done(a: str) -> bool:
            # exited (reported by its agent), or dead to the router (EOF, silence, its host lost)
            return self.exited[a].is_set() or self.router.dead_reason(a) is not None

        def wait_until(deadline: float, addrs: list[str]) -> list[str]:
            left = [a for a in addrs if not done(a)]
            while left and time.monotonic() < deadline:
                self.exited[left[0]].wait(min(0.05, max(0.0, deadline - time.monotonic())))
                left = [a for a in left if not done(a)]
            return left

        def waiter() -> None:
            left = wait_until(time.monotonic() + timeout_s, mine)
            self.kill(left)
            # the kills' exits are reported within milliseconds by a live agent; a hung one
            # is lost within peer_timeout_s (its heartbeats), which ends this wait too
            wait_until(time.monotonic() + _KILL_WAIT_S, left)
            fut.set_result(None)

        threading.Thread(target=waiter, name="monarch remote proc stopper", daemon=True).start()
        return fut

    def close(self, timeout_s: float = 3.0) -> None:
        """Stop every remote proc, then disconnect from every agent."""
        alive = self.alive()
        if alive:
            try:
                self.stop(alive, timeout_s).get(timeout_s + 6.0)
            except Exception:
                pass
        for link in list(self.links.values()):
            link.close()
