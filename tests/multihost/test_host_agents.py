"""Host agents in namespace hosts, a client in the root namespace: attach, call, crash, refuse.

Each agent is ``monarch host serve`` inside one namespace host; the client (``mh_client.py``)
runs as its own process in the root namespace, listening on the bridge's address. Everything is
started with a finalizer that kills it; every wait is bounded.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.multihost.netns import Host, HostNet

pytestmark = pytest.mark.multihost

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "multihost-test-token-0123456789abcdef"
READY_TIMEOUT_S = 30.0


def _env(token: str | None = TOKEN) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MONARCH_")}
    env["PYTHONPATH"] = str(ROOT)
    if token is not None:
        env["MONARCH_CLUSTER_TOKEN"] = token
    return env


def _readline(proc: subprocess.Popen, timeout_s: float) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout_s)
    if not ready:
        raise TimeoutError(f"no line from {proc.args[-3:]} within {timeout_s} s")
    line = proc.stdout.readline()
    if not line:
        err = proc.stderr.read() if proc.stderr is not None and proc.poll() is not None else ""
        raise EOFError(f"{proc.args[-3:]} ended (status {proc.poll()}): {err[-3000:]}")
    return line


def _start_agent(
    host: Host, *extra: str, token: str | None = TOKEN, pythonpath: list[str] | None = None
) -> tuple[subprocess.Popen, str]:
    """An agent in ``host``; its stderr (and its procs', which inherit it) goes to a file: an
    unread pipe would fill and block every process writing to it. ``pythonpath``: more folders
    the job's code is imported from (as installed on that machine)."""
    argv = host.agent_argv(*extra)
    log = open(host.net.state_dir / f"agent-{host.name}-{time.monotonic_ns()}.log", "w+")
    env = _env(token)
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join([env["PYTHONPATH"], *pythonpath])
    proc = host.popen(argv, stdout=subprocess.PIPE, stderr=log, text=True, env=env, cwd=ROOT)
    proc.log = log  # type: ignore[attr-defined]  # read by _agent_log
    line = _readline(proc, READY_TIMEOUT_S)
    assert line.startswith("monarch host agent listening on "), line
    return proc, line.split()[-1]


class Client:
    """The client process (root namespace); killed at teardown."""

    def __init__(
        self, request: pytest.FixtureRequest, mode: str, net: HostNet, agents: list[str]
    ) -> None:
        argv = [
            sys.executable,
            "-m",
            "tests.multihost.mh_client",
            mode,
            net.gateway_ip,
            ",".join(agents),
        ]
        env = _env()
        if mode == "hold":
            env["MONARCH_HOSTS"] = ",".join(f"tcp://{a[4:]}" for a in agents)  # hosts_from_config
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=env, cwd=ROOT, start_new_session=True,
        )  # fmt: skip
        request.addfinalizer(self.kill)

    def event(self, timeout_s: float = 60.0) -> dict[str, Any]:
        try:
            return json.loads(_readline(self.proc, timeout_s))
        except (TimeoutError, EOFError):
            self.kill()
            err = self.proc.stderr.read() if self.proc.stderr is not None else ""
            raise AssertionError(f"the client sent no event; its stderr:\n{err[-6000:]}") from None

    def tell(self, line: str) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            self.kill()
            err = self.proc.stderr.read() if self.proc.stderr is not None else ""
            raise AssertionError(f"the client ended early; its stderr:\n{err[-6000:]}") from None

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10.0)


def _agent_log(proc: subprocess.Popen) -> str:
    proc.log.seek(0)  # type: ignore[attr-defined]
    return proc.log.read()  # type: ignore[attr-defined]


def _wait_for(cond: Any, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)  # poll interval of a bounded wait on a real condition (/proc)
    return True


@pytest.fixture
def agents(hosts: HostNet) -> list[tuple[Host, subprocess.Popen, str]]:
    return [(host, *_start_agent(host)) for host in hosts]


def test_client_calls_procs_on_two_hosts_and_survives_losing_one(
    request, hosts: HostNet, agents
) -> None:
    client = Client(request, "scenario", hosts, [addr for _, _, addr in agents])
    where = client.event()
    assert where["event"] == "where", where
    points = where["points"]
    assert [p["hostname"] for p in points] == ["h0", "h0", "h1", "h1"]
    assert [p["addr"].rsplit(":", 1)[0] for p in points] == [f"tcp:{hosts[0].ip}"] * 2 + [
        f"tcp:{hosts[1].ip}"
    ] * 2
    h0_pids = {p["pid"] for p in points[:2]}
    assert h0_pids <= hosts[0].pids()  # the procs really run inside host h0's namespace

    relayed = client.event()
    assert relayed == {"event": "relayed", "from_h0": ["h1", "h1"], "call_all": 4}, relayed
    measured = client.event()
    assert measured["echo_ok"], measured
    kill = client.event()
    assert kill["event"] == "kill_host0", kill
    killed_at = time.monotonic()
    hosts[0].kill_all()
    kill_s = time.monotonic() - killed_at
    client.tell(repr(killed_at))
    after = client.event()
    assert after["event"] == "after_kill", after
    assert after["in_flight_s"] < 2.0 + kill_s, (
        after
    )  # connection reset: event-driven, no heartbeat wait
    assert hosts[0].ip in after["in_flight_error"], after
    assert hosts[0].ip in after["later_error"], after
    assert after["survivors"] == ["h1", "h1"]
    assert client.proc.wait(30.0) == 0, (
        client.proc.stderr.read()[-3000:] if client.proc.stderr else ""
    )
    print(
        f"\ncall_one across namespaces {measured['call_one_ms']:.3f} ms, 16 MiB echo {measured['echo_mib_s']:.0f} MiB/s, "
        f"first call() {where['first_s'] * 1e3:.1f} ms, SIGKILLed host -> in-flight call failed after {after['in_flight_s'] * 1e3:.1f} ms"
    )


def test_agent_kills_the_procs_of_a_client_that_dies_and_serves_the_next_from_hosts_from_config(
    request, hosts: HostNet, agents
) -> None:
    baseline = [host.pids() for host, _, _ in agents]  # the agent and its fork server
    client = Client(request, "hold", hosts, [addr for _, _, addr in agents])
    where = client.event()
    pids = [p["pid"] for p in where["points"]]
    assert all(any(pid in host.pids() for host, _, _ in agents) for pid in pids)
    client.kill()  # SIGKILL: no goodbye to the agents
    for (host, _, _), before in zip(agents, baseline):
        assert _wait_for(lambda h=host, b=before: h.pids() == b, 10.0), (host.pids(), before)
    second = Client(request, "hold", hosts, [addr for _, _, addr in agents])
    again = second.event()
    assert [p["hostname"] for p in again["points"]] == ["h0", "h0", "h1", "h1"]
    second.tell("done")
    assert second.proc.wait(30.0) == 0
    for (host, _, _), before in zip(agents, baseline):
        assert _wait_for(lambda h=host, b=before: h.pids() == b, 10.0), (host.pids(), before)


def test_a_client_with_the_wrong_token_is_refused_before_any_frame(hosts: HostNet) -> None:
    from monarch._core.errors import ConnectError
    from monarch._mesh.host_client import AgentLink

    proc, addr = _start_agent(hosts[0])
    lost: list[str] = []
    link = AgentLink(
        addr,
        token=b"not-the-token",
        client_addr="tcp:127.0.0.1:1",
        on_event=lambda *a: None,
        on_lost=lambda _l, r: lost.append(r),
    )
    with pytest.raises(ConnectError, match=r"does not know the cluster token|closed"):
        link.ready.get(20.0)
    good = AgentLink(
        addr,
        token=TOKEN.encode(),
        client_addr="tcp:127.0.0.1:1",
        on_event=lambda *a: None,
        on_lost=lambda *a: None,
    )
    assert good.ready.get(20.0)["hostname"] == "h0"  # the agent still serves after refusing
    good.close()
    proc.kill()
    proc.wait(10.0)
    err = _agent_log(proc)
    assert "refused a client" in err and "bad cluster token" in err, err


def test_an_agent_refuses_to_listen_on_tcp_without_a_token_unless_insecure(hosts: HostNet) -> None:
    argv = hosts[0].agent_argv()
    refused = hosts[0].run(argv, env=_env(token=None), timeout_s=60.0)
    assert refused.returncode == 2, refused
    assert "--insecure" in refused.stderr and "no cluster token" in refused.stderr
    proc, addr = _start_agent(hosts[0], "--insecure", token=None)
    assert addr.startswith(f"tcp:{hosts[0].ip}:")
    proc.kill()
    proc.wait(10.0)
    assert "INSECURE" in _agent_log(proc)


def test_an_agent_listens_on_monarchs_bind_at_advertise_form(hosts: HostNet) -> None:
    """``--listen tcp://0.0.0.0:0@tcp://IP:0``: bound on every address, procs and the printed
    address on the advertised IP (Monarch's ``BIND@ADVERTISE``)."""
    from monarch._mesh.host_client import AgentLink

    argv = hosts[0].agent_argv(listen=f"tcp://0.0.0.0:0@tcp://{hosts[0].ip}:0")
    log = open(hosts.state_dir / f"agent-bind-at-{time.monotonic_ns()}.log", "w+")
    proc = hosts[0].popen(argv, stdout=subprocess.PIPE, stderr=log, text=True, env=_env(), cwd=ROOT)
    line = _readline(proc, READY_TIMEOUT_S)
    assert line.startswith(f"monarch host agent listening on tcp:{hosts[0].ip}:"), line
    link = AgentLink(
        line.split()[-1],
        token=TOKEN.encode(),
        client_addr="tcp:127.0.0.1:1",
        on_event=lambda *a: None,
        on_lost=lambda *a: None,
    )
    assert link.ready.get(20.0)["ip"] == hosts[0].ip  # where its procs bind
    link.close()


def test_an_agent_says_it_serves_once_its_fork_server_has_done_its_imports(tmp_path: Path) -> None:
    """``on_ready`` (the "listening on" line of ``monarch host serve``) means ready to spawn: a
    client attaching then does not wait for, nor compete for CPU with, the fork server's imports."""
    import asyncio
    import threading

    from monarch._mesh.host_agent import HostAgent

    agent = HostAgent(f"unix:{tmp_path}/agent.sock", token=None, tls=None)
    seen: list[str] = []
    ready = threading.Event()

    def on_ready(addr: str) -> None:
        seen.append(repr(agent._zygote))
        ready.set()

    thread = threading.Thread(
        target=lambda: asyncio.run(agent.serve(on_ready=on_ready)), daemon=True
    )
    thread.start()
    try:
        assert ready.wait(READY_TIMEOUT_S), "the agent never said it serves"
        assert " ready " in seen[0], seen  # <ZygoteClient pid=N ready pending=0 ...>
    finally:
        agent.stop()
        thread.join(READY_TIMEOUT_S)
    assert not thread.is_alive()
    assert agent._zygote is not None and not agent._zygote.alive  # closed with the agent
