"""Faults across namespace hosts: a crashed host (every process SIGKILLed), a partitioned host
(its link cut), a hung host (every process SIGSTOPped) and a hung agent (only it SIGSTOPped).

In each case the client (``fault_client.py``, root namespace) must fail the calls in flight to
host 0's procs with ``SupervisionError`` within the liveness bound (``peer_timeout_s``, set to
``PEER_TIMEOUT_S`` here), fail later calls at once, keep calling host 1, finish
``HostMesh.shutdown()`` and exit promptly; once host 0 is healed its agent has killed the
client's procs and serves again. A crashed host's calls fail on the connection reset, well within
``KILL_BOUND_S``. Every process is killed at teardown; every wait is bounded.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.multihost.netns import HostNet
from tests.multihost.test_host_agents import (
    ROOT,
    TOKEN,
    _agent_log,
    _env,
    _readline,
    _start_agent,
    _wait_for,
)

pytestmark = pytest.mark.multihost

PEER_TIMEOUT_S = 1.5
#: slack over the bound on this loaded 2-core machine (heartbeat period, scheduling, the check's period)
SLACK_S = 0.75
#: a SIGKILLed host's calls fail on the connection reset: well under the heartbeat bound
KILL_BOUND_S = 0.5


def _client(
    request: pytest.FixtureRequest, net: HostNet, agents: list[str], broken: int = 2
) -> subprocess.Popen:
    env = _env()
    env["MONARCH_PEER_TIMEOUT_S"] = str(PEER_TIMEOUT_S)
    argv = [
        sys.executable,
        "-m",
        "tests.multihost.fault_client",
        net.gateway_ip,
        ",".join(agents),
        str(broken),
    ]
    proc = subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=env, cwd=ROOT, start_new_session=True,
    )  # fmt: skip

    def kill() -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10.0)

    request.addfinalizer(kill)
    return proc


def _event(proc: subprocess.Popen, timeout_s: float = 60.0) -> dict:
    try:
        return json.loads(_readline(proc, timeout_s))
    except (TimeoutError, EOFError) as exc:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        err = proc.stderr.read() if proc.stderr is not None else ""
        raise AssertionError(
            f"the client sent no event ({exc}); its stderr:\n{err[-6000:]}"
        ) from None


@pytest.mark.parametrize("fault", ["kill_host", "cut_link", "freeze_host", "stop_agent"])
def test_a_broken_host_fails_its_calls_within_the_bound_and_the_rest_keeps_working(
    request, hosts: HostNet, fault: str
) -> None:
    started = [_start_agent(host) for host in hosts]
    baseline = hosts[0].pids()  # the agent and its fork server
    agent0 = started[0][0]
    client = _client(request, hosts, [addr for _, addr in started])
    act = _event(client)
    assert act["event"] == "act" and [p["hostname"] for p in act["points"]] == [
        "h0",
        "h0",
        "h1",
        "h1",
    ], act
    broken_at = time.monotonic()
    if fault == "kill_host":
        hosts[
            0
        ].kill_all()  # every process of the host SIGKILLed: the kernel resets its connections
    elif fault == "cut_link":
        hosts[0].cut_link()
    elif fault == "freeze_host":
        hosts[0].freeze()
    else:
        os.kill(agent0.pid, signal.SIGSTOP)
    assert client.stdin is not None
    client.stdin.write(f"{broken_at!r}\n")
    client.stdin.flush()
    after = _event(client, 60.0)
    assert after["event"] == "after", after
    # a reset connection is an event (no heartbeat wait); silence is bounded by peer_timeout_s
    bound = KILL_BOUND_S if fault == "kill_host" else PEER_TIMEOUT_S + SLACK_S
    assert max(after["failed_after_s"]) < bound, after
    named = all("host h0" in e for e in after["errors"])  # the error names the host
    assert named, json.dumps(after, indent=1)
    assert after["later_error"] and after["later_s"] < 0.5, after  # later calls fail at once
    assert after["survivors"] == ["h1", "h1"] and after["survivors_s"] < 2.0, after
    assert after["shutdown_s"] < 5.0, after  # HostMesh.shutdown() with a dead host: prompt
    exit_started = time.monotonic()
    assert client.wait(20.0) == 0, client.stderr.read()[-3000:] if client.stderr else ""
    exit_s = time.monotonic() - exit_started
    assert exit_s < 5.0, (exit_s, client.stderr.read()[-6000:] if client.stderr else "")
    print(
        f"\n{fault}: in-flight calls failed after {', '.join(f'{s * 1e3:.0f}' for s in after['failed_after_s'])} ms "
        f"(bound {bound} s), HostMesh.shutdown() {after['shutdown_s'] * 1e3:.0f} ms, client exit {exit_s * 1e3:.0f} ms"
    )
    # heal host 0: its agent has ended the client's session and killed its procs, and serves on
    if fault == "kill_host":
        return  # nothing of it is left to heal
    if fault == "cut_link":
        hosts[0].restore_link()
    elif fault == "freeze_host":
        hosts[0].thaw()
    else:
        os.kill(agent0.pid, signal.SIGCONT)
    assert _wait_for(lambda: hosts[0].pids() == baseline, PEER_TIMEOUT_S + 10.0), (
        hosts[0].pids(),
        baseline,
        _agent_log(agent0),
    )


def test_a_hung_proc_on_a_healthy_host_is_declared_hung_and_killed_by_its_agent(
    request, hosts: HostNet
) -> None:
    """One proc of host 0 SIGSTOPped, its agent healthy: only its call fails (within the bound,
    "hung: silent"; the MeshFailure names the host); host 0's other proc answers; its agent
    SIGKILLs it."""
    started = [_start_agent(host) for host in hosts]
    client = _client(request, hosts, [addr for _, addr in started], broken=1)
    act = _event(client)
    assert act["event"] == "act", act
    victim = act["points"][0]["pid"]
    broken_at = time.monotonic()
    os.kill(victim, signal.SIGSTOP)
    assert client.stdin is not None
    client.stdin.write(f"{broken_at!r}\n")
    client.stdin.flush()
    after = _event(client, 60.0)
    assert after["event"] == "after", after
    assert (
        len(after["failed_after_s"]) == 1 and after["failed_after_s"][0] < PEER_TIMEOUT_S + SLACK_S
    ), after
    assert "hung: silent" in after["errors"][0], after
    assert len(after["failures"]) == 1 and "host h0" in after["failures"][0], (
        after
    )  # the MeshFailure names the host
    assert after["h0_other"] == "h0", after  # the host itself is fine
    assert after["survivors"] == ["h1", "h1"], after
    assert _wait_for(
        lambda: not os.path.exists(f"/proc/{victim}") or _zombie(victim), 10.0
    )  # killed by its agent
    assert client.wait(20.0) == 0, client.stderr.read()[-3000:] if client.stderr else ""


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return True
    return stat[stat.rfind(b")") + 2 :].startswith(b"Z")


def test_a_spawn_on_a_hung_agent_fails_within_the_bound_not_the_request_timeout(
    hosts: HostNet,
) -> None:
    """The client side of the agent heartbeat: a SIGSTOPped agent is lost after ~peer_timeout_s
    ("no heartbeat"), so a request in flight fails then (not after the 60 s request timeout)."""
    from monarch._core.errors import SupervisionError
    from monarch._mesh.host_client import AgentLink

    agent, addr = _start_agent(hosts[0])
    lost: list[str] = []
    link = AgentLink(
        addr,
        token=TOKEN.encode(),
        client_addr="tcp:127.0.0.1:1",
        on_event=lambda *_: None,
        on_lost=lambda _l, why: lost.append(why),
        peer_timeout_s=PEER_TIMEOUT_S,
    )
    link.ready.get(20.0)
    os.kill(agent.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        with pytest.raises(SupervisionError, match="no heartbeat"):
            link.request({"op": "spawn", "count": 1, "name": "never", "env": {}}, timeout_s=30.0)
        assert time.monotonic() - started < PEER_TIMEOUT_S + SLACK_S
        assert lost and "host h0" in lost[0] and "no heartbeat" in lost[0], lost
    finally:
        os.kill(agent.pid, signal.SIGCONT)
    # resumed, the agent finds our end closed and ends the session
    assert _wait_for(
        lambda: "disconnected" in _agent_log(agent) or "went silent" in _agent_log(agent), 10.0
    ), _agent_log(agent)


def test_the_agent_ends_the_session_of_a_client_that_goes_silent(request) -> None:
    """The agent side: after a hello asking for heartbeats, the agent pings every quarter of the
    bound and closes the connection once the client has sent nothing for the bound."""
    import socket

    from monarch._mesh import agent_wire
    from monarch._transport.auth import dial_handshake_blocking

    from tests.multihost.test_tls import _InProcessAgent, _until

    ag = _InProcessAgent(request, token=TOKEN.encode(), tls=None)
    with socket.create_connection(ag.hostport, timeout=10.0) as s:
        assert s.recv(9) == agent_wire.PREFACE + agent_wire.MODE_TOKEN
        dial_handshake_blocking(s, TOKEN.encode())
        s.sendall(
            agent_wire.encode({"op": "hello", "client": "tcp:127.0.0.1:1", "peer_timeout_s": 1.0})
        )
        assert agent_wire.recv_frame_blocking(s)["op"] == "hello"
        started = time.monotonic()
        pings = 0
        with contextlib.suppress(ConnectionError):
            while True:  # we stay silent: pings, then EOF
                assert agent_wire.recv_frame_blocking(s)["op"] == "ping"
                pings += 1
        silent_s = time.monotonic() - started
    assert pings >= 2 and 1.0 <= silent_s < 1.0 + SLACK_S, (pings, silent_s)
    assert _until(lambda: not ag.agent.sessions)
