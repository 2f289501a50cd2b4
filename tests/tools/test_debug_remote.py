"""``monarch debug`` for ranks of other machines: a client that listens on TCP also serves its
debug controller on a TCP port, and a rank that cannot reach the controller's Unix socket (a proc
of a host agent on another machine) pauses there instead. Real procs, a real pty (pexpect).

The procs run on this machine with the Unix path they are given pointing nowhere, which is what
a rank of another machine sees; network namespaces would not show it (they share the client's
filesystem, so the Unix socket is reachable from them)."""

from __future__ import annotations

import os
import re
import select
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pexpect
import pytest
from monarch.tools import debug_wire
from monarch.tools.debug_hook import split_controller

from tests.runtime.tls_certs import make_pki, openssl_available
from tests.tools.conftest import free_port

HERE = Path(__file__).parent
ROOT = HERE.parents[1]
_LINES = (HERE / "debug_remote_client.py").read_text().splitlines()
STOP = next(i + 2 for i, line in enumerate(_LINES) if line.strip() == "breakpoint()")
TIMEOUT = 120  # seconds for any one expect (procs start on a shared 2-core machine)


@pytest.mark.parametrize(
    "value, parts",
    [
        ("unix:/a/b.sock", ("unix:/a/b.sock", "")),
        ("unix:/a,b/c.sock,tcp:10.0.0.1:4000", ("unix:/a,b/c.sock", "tcp:10.0.0.1:4000")),
        ("unix:/a,b/c.sock", ("unix:/a,b/c.sock", "")),
        ("tls:[::1]:4000", ("", "tls:[::1]:4000")),
        ("", ("", "")),
    ],
)
def test_split_controller_takes_the_network_part_last(value: str, parts: tuple[str, str]) -> None:
    assert split_controller(value) == parts


def _session(
    client: pexpect.spawn,
    spawned: list[pexpect.spawn],
    port: int,
    scheme: str,
    gateway: str,
    *,
    tls: bool = False,
    rank_host: str | None = None,
) -> tuple[str, int]:
    """Drive one ``monarch debug`` session against ``client`` (a debug_remote_client.py run)
    until it has printed its results and ended; returns the controller's network host and port.
    ``rank_host``: the hostname the paused rank must report (None: any)."""
    client.expect(rf"CONTROLLER ({scheme}:{re.escape(gateway)}:\d+)")
    network = client.match.group(1)
    client.expect(r"monarch debug: far rank 1 paused at (\S+):(\d+)")
    assert int(client.match.group(2)) == STOP - 1  # the breakpoint() call itself
    host, _, tcp_port = network[len("tcp:") :].rpartition(":")
    # the port wants the cluster token (inside TLS: a plain peer fails the handshake) before it
    # reads anything else
    with socket.create_connection((host, int(tcp_port)), timeout=10) as s:
        if tls:
            s.sendall(b"not a TLS client hello\r\n" * 8)
        with pytest.raises(ConnectionError):  # refused: closed (DebugWireError is one too)
            debug_wire.login(s, b"not the token", "rank")

    cli = pexpect.spawn(
        sys.executable,
        ["-m", "monarch.cli", "debug", "--port", str(port)],
        env=dict(os.environ, COLUMNS="160"),
        encoding="utf-8",
        timeout=TIMEOUT,
    )
    spawned.append(cli)
    cli.expect_exact("monarch_dbg> ")
    cli.sendline("list")
    shown = re.escape(rank_host) if rank_host else r"\S+"
    # coords: {'gpus': 1}, or {'hosts': 0, 'gpus': 1} on a host agent's mesh
    cli.expect(rf"far\s+│ 1\s+│ {{[^}}]*'gpus': 1}}\s+│ {shown}\s+│ work\s+│ \S*client\.py:{STOP}")
    cli.expect_exact("monarch_dbg> ")
    cli.sendline("attach far 1")
    cli.expect_exact("-> w = w + 1")
    cli.expect_exact("(Pdb) ")
    cli.sendline("p w")
    cli.expect(r"\r\n21\r\n")
    cli.expect_exact("(Pdb) ")
    cli.sendline("!w = 100")  # "!": w alone is pdb's where
    cli.expect_exact("(Pdb) ")
    cli.sendline("n")
    cli.expect_exact("-> return w")
    cli.expect_exact("(Pdb) ")
    cli.sendline("detach")
    cli.expect_exact("monarch_dbg> ")
    cli.sendline("continue")
    cli.expect_exact("continued 1 paused rank(s)")
    client.expect(r"RESULTS \[22, 101\]")  # rank 1 ran on from the value set in pdb
    client.expect(pexpect.EOF)
    client.close()
    assert client.exitstatus == 0
    return host, int(tcp_port)


@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
def test_a_rank_without_the_unix_socket_pauses_over_the_network(
    tmp_path: Path, spawned: list[pexpect.spawn], tls: bool
) -> None:
    port = free_port()
    script = tmp_path / "client.py"
    shutil.copy(HERE / "debug_remote_client.py", script)
    env = dict(os.environ, MONARCH_DEBUG_SERVER_PORT=str(port))
    env.pop("PYTHONBREAKPOINT", None)
    scheme = "tcp"
    if tls:  # the job's TCP links and the debugger's run over mutual TLS (the procs inherit it)
        if not openssl_available():
            pytest.skip("the openssl command is not installed")
        pki = make_pki(tmp_path / "pki")
        env.update(
            MONARCH_TLS_CA=str(pki / "ca.pem"),
            MONARCH_TLS_CERT=str(pki / "a.pem"),
            MONARCH_TLS_KEY=str(pki / "a.key"),
        )
        scheme = "tls"
    client = pexpect.spawn(
        sys.executable, [str(script)], cwd=str(tmp_path), env=env, encoding="utf-8", timeout=TIMEOUT
    )
    spawned.append(client)
    host, tcp_port = _session(client, spawned, port, scheme, "127.0.0.1", tls=tls)
    with pytest.raises(ConnectionRefusedError):  # the listener went with the client
        socket.create_connection((host, tcp_port), timeout=10).close()


TOKEN = "debug-remote-test-token-0123456789abcdef"


@pytest.mark.multihost
def test_a_rank_under_a_host_agent_in_a_namespace_host_pauses_over_tcp(
    tmp_path: Path, spawned: list[pexpect.spawn]
) -> None:
    from tests.multihost import netns

    reason = netns.unavailable_reason()
    if reason:
        pytest.skip(reason)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MONARCH_")}
    env.pop("PYTHONBREAKPOINT", None)
    env.update(MONARCH_CLUSTER_TOKEN=TOKEN, PYTHONPATH=str(ROOT))
    with netns.HostNet(1) as net:
        host = net.hosts[0]
        log = open(tmp_path / "agent.log", "w+")
        agent = host.popen(
            host.agent_argv(),
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            env=env,
            cwd=str(ROOT),
        )
        assert agent.stdout is not None
        ready, _, _ = select.select([agent.stdout], [], [], 30.0)
        line = agent.stdout.readline() if ready else ""
        assert line.startswith("monarch host agent listening on "), (line, log.read())
        port = free_port()
        script = tmp_path / "client.py"
        shutil.copy(HERE / "debug_remote_client.py", script)
        client = pexpect.spawn(
            sys.executable,
            [str(script), net.gateway_ip, line.split()[-1]],
            cwd=str(tmp_path),
            env=dict(env, MONARCH_DEBUG_SERVER_PORT=str(port)),
            encoding="utf-8",
            timeout=TIMEOUT,
        )
        spawned.append(client)
        # the paused rank reports the namespace host's hostname: it runs there
        _session(client, spawned, port, "tcp", net.gateway_ip, rank_host=host.name)
