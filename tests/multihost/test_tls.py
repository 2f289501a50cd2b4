"""Host agents serving mutual TLS in namespace hosts; a client attaches with Monarch's ``ca`` /
``private_key``, spawns procs on both hosts and calls them (client -> proc, proc -> proc across
hosts, 16 MiB round trip), every link over TLS; clients without the right certificate are refused.

Each agent gets its own certificate (``MONARCH_TLS_*``); the procs it starts present it. The
client is its own process (``tls_client.py``), killed at teardown; every wait is bounded.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from monarch._core.errors import ProtocolError

from tests.multihost.netns import Host, HostNet
from tests.multihost.test_host_agents import (
    READY_TIMEOUT_S,
    ROOT,
    TOKEN,
    _agent_log,
    _env,
    _readline,
)
from tests.runtime.tls_certs import make_pki, openssl_available

pytestmark = [
    pytest.mark.multihost,
    pytest.mark.skipif(not openssl_available(), reason="the openssl command is not installed"),
]


def _tls_env(pki: Path, leaf: str) -> dict[str, str]:
    return {
        "MONARCH_TLS_CA": str(pki / "ca.pem"),
        "MONARCH_TLS_CERT": str(pki / f"{leaf}.pem"),
        "MONARCH_TLS_KEY": str(pki / f"{leaf}.key"),
    }


def _agent(host: Host, pki: Path, leaf: str, token: str | None) -> tuple[subprocess.Popen, str]:
    """``monarch host serve`` in ``host`` with the TLS files of ``leaf``; killed with the host."""
    argv = [sys.executable, "-m", "monarch.cli", "host", "serve", "--listen", f"tcp://{host.ip}:0"]
    log = open(host.net.state_dir / f"agent-tls-{host.name}-{time.monotonic_ns()}.log", "w+")
    env = {**_env(token), **_tls_env(pki, leaf)}
    proc = host.popen(argv, stdout=subprocess.PIPE, stderr=log, text=True, env=env, cwd=ROOT)
    proc.log = log  # type: ignore[attr-defined]  # read by _agent_log
    line = _readline(proc, READY_TIMEOUT_S)
    assert line.startswith("monarch host agent listening on "), line
    return proc, line.split()[-1]


def _run_client(
    request: pytest.FixtureRequest,
    net: HostNet,
    agents: list[str],
    ca: str,
    key: str,
    token: str | None,
) -> list[dict]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MONARCH_")}
    env["PYTHONPATH"] = str(ROOT)
    if token is not None:
        env["MONARCH_CLUSTER_TOKEN"] = token
    argv = [
        sys.executable,
        "-m",
        "tests.multihost.tls_client",
        net.gateway_ip,
        ",".join(agents),
        ca,
        key,
    ]
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
        start_new_session=True,
    )

    def kill() -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10.0)

    request.addfinalizer(kill)
    events = []
    try:
        while True:
            ev = json.loads(_readline(proc, 60.0))
            events.append(ev)
            if ev["event"] in ("done", "error"):
                break
    except (TimeoutError, EOFError) as exc:
        kill()
        raise AssertionError(
            f"the client ended early ({exc}); its stderr:\n{(proc.stderr.read() if proc.stderr else '')[-6000:]}"
        ) from None
    proc.wait(40.0)
    return events


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.mark.parametrize("token", [TOKEN, None], ids=["tls+token", "tls-only"])
def test_a_client_attaches_with_ca_and_private_key_and_calls_procs_across_tls_hosts(
    request, hosts: HostNet, pki: Path, token: str | None
) -> None:
    agents = [_agent(hosts[0], pki, "a", token), _agent(hosts[1], pki, "b", token)]
    events = _run_client(
        request, hosts, [a for _, a in agents], str(pki / "ca.pem"), str(pki / "a-both.pem"), token
    )
    where, done = events[0], events[-1]
    assert where["event"] == "where", events
    assert [p["hostname"] for p in where["points"]] == ["h0", "h0", "h1", "h1"]
    assert where["tls_env"]["MONARCH_TLS_CERT"].endswith("a-both.pem")  # the client's own files
    assert done["event"] == "done" and done["relayed"] == ["h1", "h1"] and done["echo_ok"], done
    assert done["tcp_link_kinds"] == ["TlsLink"], done  # every TCP link of the client runs TLS
    for proc, _addr in agents:
        log = _agent_log(proc)
        assert "attached" in log and "refused" not in log, log
    print(
        f"\nTLS across namespaces ({'token+' if token else ''}tls): call_one {done['call_one_ms']:.3f} ms, 16 MiB {done['echo_mib_s']:.0f} MiB/s"
    )


def test_clients_without_the_right_certificate_are_refused_by_a_tls_agent(
    request, hosts: HostNet, pki: Path
) -> None:
    proc, addr = _agent(hosts[0], pki, "a", TOKEN)
    # no TLS files at all: refused with a clear error, before any request
    plain = _run_client(request, hosts, [addr], "trust_all_connections", "-", TOKEN)
    assert plain[-1]["event"] == "error" and "requires TLS" in plain[-1]["error"], plain
    # a certificate of another CA: the agent refuses it in the handshake
    other = _run_client(
        request, hosts, [addr], str(pki / "ca.pem"), f"{pki / 'x.pem'},{pki / 'x.key'}", TOKEN
    )
    assert other[-1]["event"] == "error", other
    deadline = time.monotonic() + 10.0
    while "certificate verify failed" not in _agent_log(proc) and time.monotonic() < deadline:
        time.sleep(0.05)  # the agent's log file, written by another process
    log = _agent_log(proc)
    assert "refused a client" in log and "certificate verify failed" in log, log
    assert "attached" not in log


def test_an_agent_with_tls_alone_needs_no_token_and_one_with_neither_refuses(
    hosts: HostNet, pki: Path
) -> None:
    argv = hosts[0].agent_argv()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MONARCH_")}
    env["PYTHONPATH"] = str(ROOT)
    refused = hosts[0].run(argv, env=env, timeout_s=60.0)
    assert refused.returncode == 2 and "no cluster token and no TLS" in refused.stderr, refused
    proc, addr = _agent(hosts[0], pki, "a", None)  # mutual TLS alone authenticates: it serves
    assert addr.startswith(f"tcp:{hosts[0].ip}:")
    assert "INSECURE" not in _agent_log(proc)


def test_host_serve_tls_options_accept_a_tls_client_and_refuse_plain_and_other_ca_clients(
    request, hosts: HostNet, pki: Path
) -> None:
    """``monarch host serve --tls-ca/--tls-cert/--tls-key`` (no ``MONARCH_TLS_*`` set): a client
    with a certificate of that CA attaches and runs procs there (they present the host's
    certificate); a plain client, a raw plaintext peer and a certificate of another CA are refused."""
    import socket

    from monarch._core.errors import ConnectError
    from monarch._mesh import agent_wire
    from monarch._mesh.host_client import AgentLink
    from monarch._transport.tls import TlsConfig

    def serve(host: Host, leaf: str) -> tuple[subprocess.Popen, str]:
        argv = host.agent_argv()
        argv += [
            "--tls-ca",
            str(pki / "ca.pem"),
            "--tls-cert",
            str(pki / f"{leaf}.pem"),
            "--tls-key",
            str(pki / f"{leaf}.key"),
        ]
        log = open(
            host.net.state_dir / f"agent-tls-opts-{host.name}-{time.monotonic_ns()}.log", "w+"
        )
        proc = host.popen(
            argv, stdout=subprocess.PIPE, stderr=log, text=True, env=_env(None), cwd=ROOT
        )
        proc.log = log  # type: ignore[attr-defined]  # read by _agent_log
        try:
            line = _readline(proc, READY_TIMEOUT_S)
        except EOFError:
            raise AssertionError(_agent_log(proc)) from None
        assert line.startswith("monarch host agent listening on "), line
        return proc, line.split()[-1]

    proc, addr = serve(hosts[0], "b")
    _, addr1 = serve(hosts[1], "a")
    assert "INSECURE" not in _agent_log(proc)  # TLS alone authenticates

    def link(tls: TlsConfig | None) -> AgentLink:
        return AgentLink(
            addr,
            token=None,
            client_addr="tcp:127.0.0.1:1",
            on_event=lambda *_: None,
            on_lost=lambda *_: None,
            tls=tls,
        )

    good = link(TlsConfig(str(pki / "ca.pem"), str(pki / "a.pem"), str(pki / "a.key")))
    assert good.ready.get(20.0)["hostname"] == "h0"
    good.close()
    with pytest.raises(ConnectError, match="requires TLS"):
        link(None).ready.get(20.0)  # a client without TLS files: a clear refusal, no timeout
    # a certificate of another CA: the agent refuses it in the handshake
    with pytest.raises(ConnectError):
        link(TlsConfig(str(pki / "ca.pem"), str(pki / "x.pem"), str(pki / "x.key"))).ready.get(20.0)
    # a client of another CA: it refuses the agent's certificate
    with pytest.raises(ConnectError, match="certificate verify failed"):
        link(TlsConfig(str(pki / "other.pem"), str(pki / "x.pem"), str(pki / "x.key"))).ready.get(
            20.0
        )
    # a raw plaintext peer that ignores the preface and sends a hello: nothing is answered
    host, port = addr[4:].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=20.0) as s:
        assert s.recv(9) == agent_wire.PREFACE + agent_wire.MODE_TLS
        s.sendall(agent_wire.encode({"op": "hello", "client": "tcp:127.0.0.1:1"}))
        got = b""
        while chunk := s.recv(4096):
            got += chunk
        assert agent_wire.PREFACE not in got and b"hostname" not in got, got  # at most a TLS alert
    assert _until(lambda: _agent_log(proc).count("refused a client") >= 4, 20.0), _agent_log(proc)
    agent_log = _agent_log(proc)
    assert "certificate verify failed" in agent_log, agent_log
    assert "bad frame" not in agent_log, agent_log  # a client closing its socket just disconnected
    # end to end: procs on the agent started with the options, called over TLS
    events = _run_client(
        request, hosts, [addr, addr1], str(pki / "ca.pem"), str(pki / "a-both.pem"), None
    )
    assert events[0]["event"] == "where", events
    assert [p["hostname"] for p in events[0]["points"]] == ["h0", "h0", "h1", "h1"], events
    done = events[-1]
    assert done["event"] == "done" and done["relayed"] == ["h1", "h1"] and done["echo_ok"], events
    assert done["tcp_link_kinds"] == ["TlsLink"], done
    # a CA without a certificate is a usage error, named
    argv = hosts[0].agent_argv()
    bad = hosts[0].run([*argv, "--tls-ca", str(pki / "ca.pem")], env=_env(None), timeout_s=60.0)
    assert bad.returncode == 2 and "--tls-cert" in bad.stderr, bad


# -- the agent's pre-authentication limits, on an in-process agent (no namespaces needed) -------


class _InProcessAgent:
    """A HostAgent on 127.0.0.1 served on its own loop thread (no fork server); stopped at the end."""

    def __init__(self, request: pytest.FixtureRequest, **kwargs: object) -> None:
        import asyncio
        import threading

        from monarch._mesh.host_agent import HostAgent

        self.agent = HostAgent("tcp://127.0.0.1:0", use_fork_server=False, **kwargs)  # type: ignore[arg-type]
        ready = threading.Event()
        self.thread = threading.Thread(
            target=lambda: asyncio.run(self.agent.serve(on_ready=lambda _a: ready.set())),
            daemon=True,
        )
        self.thread.start()
        assert ready.wait(30.0)
        request.addfinalizer(self.stop)
        host, port = self.agent.address[4:].rsplit(":", 1)
        self.hostport = (host, int(port))

    def stop(self) -> None:
        self.agent.stop()
        self.thread.join(15.0)


def _until(pred, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not pred():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)  # a bounded poll of the agent's counters
    return True


def test_the_agent_decodes_no_pickle_before_or_after_authentication(request) -> None:
    import pickle
    import socket
    import struct

    from monarch._mesh import agent_wire
    from monarch._transport.auth import dial_handshake_blocking

    ag = _InProcessAgent(request, token=TOKEN.encode(), tls=None)
    evil = pickle.dumps(eval, protocol=5)  # any pickle: it must never reach pickle.loads
    # before authentication: a pickle where the token proof belongs is refused as a bad token
    with socket.create_connection(ag.hostport, timeout=10.0) as s:
        assert s.recv(9) == agent_wire.PREFACE + agent_wire.MODE_TOKEN
        s.recv(40)
        s.sendall(evil.ljust(64, b"\0")[:64])
        s.settimeout(10.0)
        assert s.recv(100) == b""  # closed, nothing answered
    # after authentication: a pickle as the first request is an undecodable frame: refused
    with socket.create_connection(ag.hostport, timeout=10.0) as s:
        assert s.recv(9) == agent_wire.PREFACE + agent_wire.MODE_TOKEN
        dial_handshake_blocking(s, TOKEN.encode())
        s.sendall(struct.pack(">I", len(evil)) + evil)
        assert s.recv(100) == b""
    assert _until(lambda: ag.agent.refused == 2 and not ag.agent.sessions)
    with pytest.raises(ProtocolError, match="undecodable"):
        agent_wire.decode(evil)


def test_a_client_decodes_no_pickle_from_a_fake_agent() -> None:
    import pickle
    import socket
    import struct
    import threading

    from monarch._core.errors import ConnectError
    from monarch._mesh import agent_wire
    from monarch._mesh.host_client import AgentLink

    lsock = socket.create_server(("127.0.0.1", 0))
    evil = pickle.dumps(eval, protocol=5)

    def fake() -> None:
        conn, _ = lsock.accept()
        with conn:
            conn.sendall(agent_wire.PREFACE + agent_wire.MODE_NONE)
            conn.recv(1000)  # the hello
            conn.sendall(struct.pack(">I", len(evil)) + evil)
            conn.recv(1)

    t = threading.Thread(target=fake, daemon=True)
    t.start()
    lost: list[str] = []
    link = AgentLink(
        f"tcp:127.0.0.1:{lsock.getsockname()[1]}",
        token=None,
        client_addr="tcp:127.0.0.1:1",
        on_event=lambda *_: None,
        on_lost=lambda _l, why: lost.append(why),
    )
    with pytest.raises(ConnectError, match="undecodable"):
        link.ready.get(15.0)
    t.join(10.0)
    lsock.close()


def test_the_agent_drops_silent_peers_and_caps_connections_in_their_handshake(
    request, monkeypatch, pki: Path
) -> None:
    import socket

    from monarch._mesh import host_agent

    monkeypatch.setattr(host_agent, "AUTH_TIMEOUT_S", 1.0)
    monkeypatch.setattr(host_agent, "MAX_UNAUTHENTICATED", 2)
    ag = _InProcessAgent(request, token=TOKEN.encode(), tls=_tls_config(pki))
    silent = [socket.create_connection(ag.hostport, timeout=10.0) for _ in range(2)]
    assert _until(lambda: ag.agent._pending_auth == 2)
    start = time.monotonic()
    third = socket.create_connection(ag.hostport, timeout=10.0)
    assert third.recv(100) == b""  # refused at accept: not even the preface
    assert _until(lambda: ag.agent.refused == 1)
    for s in silent:
        got = b""
        while chunk := s.recv(100):
            got += chunk
        assert got == b"MNRCHag1T"  # the preface, then nothing: dropped after AUTH_TIMEOUT_S
    assert time.monotonic() - start < 5.0
    assert _until(lambda: ag.agent._pending_auth == 0 and ag.agent.refused == 3)
    for s in [*silent, third]:
        s.close()


def _tls_config(pki: Path):
    from monarch._transport.tls import TlsConfig

    return TlsConfig(str(pki / "ca.pem"), str(pki / "a.pem"), str(pki / "a.key"))
