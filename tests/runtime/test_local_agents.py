"""Host agents of this machine as Monarch starts them: on a Unix socket (``ipc://``), on an
inherited listening socket (``tcp://HOST:fdN``), under Monarch's alias ``DIAL_TO@BIND_TO``; and
``attach_to_workers`` dialing an agent that is not listening yet, bounded by Monarch's
``mesh_attach_config_timeout``. Each client runs in a fresh process (a client's transport is
chosen when its runtime starts); every agent is killed at the end."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from monarch._transport.address import split_alias

TOKEN = "local-agents-test-token"


def _env(token: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MONARCH_", "HYPERACTOR_"))}
    if token:
        env["MONARCH_CLUSTER_TOKEN"] = TOKEN
    return env


def _agent(address: str, token: bool, pass_fds: tuple[int, ...] = ()) -> subprocess.Popen[bytes]:
    code = (
        "from monarch.actor import run_worker_loop_forever; "
        f"run_worker_loop_forever(address={address!r}, ca='trust_all_connections')"
    )
    return subprocess.Popen([sys.executable, "-c", code], env=_env(token), pass_fds=pass_fds)


def _client(body: str, token: bool) -> list[str]:
    """Run ``body`` as a fresh client process; its printed lines."""
    code = textwrap.dedent(
        """
        import os
        from monarch.actor import Actor, attach_to_workers, endpoint
        from monarch.config import configured

        class Where(Actor):
            @endpoint
            def pid(self) -> int:
                return os.getpid()
        """
    ) + textwrap.dedent(body)
    out = subprocess.run(
        [sys.executable, "-c", code], env=_env(token), capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()


def _stop(*agents: subprocess.Popen[bytes]) -> None:
    for a in agents:
        a.kill()
        a.wait(timeout=30)


SPAWN_AND_SHUT_DOWN = """
hosts = attach_to_workers(ca="trust_all_connections", workers=WORKERS)
pids = hosts.spawn_procs().spawn("where", Where).pid.call().get(timeout=60)
print(len(pids), os.getpid() not in set(pids.values()))
hosts.shutdown().get(timeout=60)
"""


def test_an_ipc_agent_serves_a_client_of_this_machine_without_a_token(tmp_path: Path) -> None:
    paths = [tmp_path / "a0", tmp_path / "a1"]
    body = f"WORKERS = {[f'ipc://{p}' for p in paths]!r}\n" + SPAWN_AND_SHUT_DOWN.replace(
        "hosts.shutdown()",
        # the agents' sockets are private to this user (checked while they serve)
        "print([oct(os.stat(w[6:]).st_mode & 0o777) for w in WORKERS])\nhosts.shutdown()",
    )
    agents = []
    try:
        agents = [_agent(f"ipc://{p}", token=False) for p in paths]
        assert _client(body, token=False) == ["2 True", "['0o600', '0o600']"]
    finally:
        _stop(*agents)


def test_a_tcp_agent_without_a_token_or_tls_still_refuses_to_start() -> None:
    agent = _agent("tcp://127.0.0.1:0", token=False)
    try:
        assert agent.wait(timeout=60) != 0
    finally:
        _stop(agent)


def test_attach_dials_an_agent_started_after_the_client(tmp_path: Path) -> None:
    path = tmp_path / "late"
    body = f"""
    import subprocess, sys
    hosts = attach_to_workers(ca="trust_all_connections", workers=["ipc://{path}"])
    agent = subprocess.Popen([sys.executable, "-c",
        "from monarch.actor import run_worker_loop_forever; "
        "run_worker_loop_forever(address='ipc://{path}', ca='trust_all_connections')"])
    try:
        hosts.initialized.get(timeout=60)
        print(len(hosts.spawn_procs().spawn("where", Where).pid.call().get(timeout=60)))
        hosts.shutdown().get(timeout=60)
    finally:
        agent.kill()
        agent.wait(timeout=30)
    """
    assert _client(body, token=False) == ["1"]


def test_attach_to_an_unreachable_agent_fails_after_mesh_attach_config_timeout(
    tmp_path: Path,
) -> None:
    path = tmp_path / "never_bound"
    body = f"""
    import time
    with configured(mesh_attach_config_timeout="300ms"):
        start = time.monotonic()
        hosts = attach_to_workers(ca="trust_all_connections", workers=["ipc://{path}"])
        try:
            hosts.initialized.get(timeout=60)
        except Exception as exc:
            print("attach failed: config push failed during attach" in str(exc), "{path}" in str(exc))
            print(time.monotonic() - start < 10)
    """
    assert _client(body, token=False) == ["True True", "True"]


def test_host_mesh_shutdown_ends_a_run_worker_loop_forever_agent(tmp_path: Path) -> None:
    path = tmp_path / "agent"
    agent = _agent(f"ipc://{path}", token=False)
    try:
        body = f"WORKERS = ['ipc://{path}']\n" + SPAWN_AND_SHUT_DOWN
        assert _client(body, token=False) == ["1 True"]
        assert agent.wait(timeout=60) == 0  # Monarch's worker loop returns after shutdown
        assert not path.exists()  # and removed its socket
    finally:
        _stop(agent)


def test_an_agent_serves_on_an_inherited_listening_socket() -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    agent = _agent(f"tcp://127.0.0.1:fd{sock.fileno()}", token=True, pass_fds=(sock.fileno(),))
    sock.close()
    try:
        body = f"WORKERS = ['tcp://127.0.0.1:{port}']\n" + SPAWN_AND_SHUT_DOWN
        assert _client(body, token=True) == ["1 True"]
    finally:
        _stop(agent)


def test_an_agent_under_monarchs_alias_binds_the_wildcard_and_is_dialed_at_the_first_part() -> None:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    alias = f"tcp://127.0.0.1:{port}@tcp://0.0.0.0:{port}"
    agent = _agent(alias, token=True)
    try:
        body = f"WORKERS = [{alias!r}]\n" + SPAWN_AND_SHUT_DOWN
        assert _client(body, token=True) == ["1 True"]
    finally:
        _stop(agent)


@pytest.mark.parametrize(
    "address, expected",
    [
        (
            "tcp://10.0.0.2:26600@tcp://0.0.0.0:26600",
            ("tcp://0.0.0.0:26600", "tcp://10.0.0.2:26600"),
        ),
        (
            "tcp://0.0.0.0:0@tcp://10.0.0.2:0",
            ("tcp://0.0.0.0:0", "tcp://10.0.0.2:0"),
        ),  # the older order
        ("tcp://10.0.0.2:1@tcp://10.0.0.3:1", ("tcp://10.0.0.3:1", "tcp://10.0.0.2:1")),
        ("tcp://10.0.0.2:1", ("tcp://10.0.0.2:1", None)),
    ],
)
def test_split_alias_reads_monarchs_dial_to_at_bind_to(
    address: str, expected: tuple[str, str | None]
) -> None:
    assert split_alias(address) == expected
