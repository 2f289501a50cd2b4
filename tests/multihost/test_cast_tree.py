"""Casts across namespace hosts: a broadcast goes down a per-host tree (one frame per host from the
client; the host's head forwards to its other procs); a ``call()`` to at most FANOUT procs goes
straight to them, and to more down the per-host tree, each head reducing its host's results into
one reply; per-sender FIFO holds between tree casts and direct calls; a stream survives a proc's
death (through the tree: a non-head's). Over more than FANOUT hosts, casts in flight through a
forwarder host that is lost (SIGKILLed, or its link cut) are re-sent by the client to the hosts
below it."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from tests.multihost.netns import HostNet
from tests.multihost.procs import kill_session
from tests.multihost.test_host_agents import ROOT, _env, _readline, _start_agent, _wait_for

pytestmark = pytest.mark.multihost


@pytest.mark.parametrize("hosts", [3], indirect=True)
@pytest.mark.parametrize("per_host", [2, 3], ids=["6procs", "9procs"])
def test_a_cast_crosses_each_host_boundary_once_and_call_is_reduced_per_host(
    request, hosts: HostNet, per_host: int
) -> None:
    agents = [_start_agent(host)[1] for host in hosts]
    argv = [
        sys.executable,
        "-m",
        "tests.multihost.tree_client",
        hosts.gateway_ip,
        ",".join(agents),
        str(per_host),
    ]
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
        cwd=ROOT,
        start_new_session=True,
    )

    request.addfinalizer(lambda: kill_session(proc))
    try:
        got = json.loads(_readline(proc, 90.0))
    except (TimeoutError, EOFError) as exc:
        kill_session(proc)
        raise AssertionError(
            f"{exc}; its stderr:\n{(proc.stderr.read() if proc.stderr else '')[-6000:]}"
        ) from None
    n = 3 * per_host
    heads = {f"tcp:{host.ip}" for host in hosts}
    # a broadcast: one frame per host (to its first proc), not one per proc
    assert len(got["broadcast_to"]) == 3, got
    assert {a.rsplit(":", 1)[0] for a in got["broadcast_to"]} == heads, got
    if n <= 8:  # call() to at most FANOUT procs: straight to each (lower latency), one reply each
        assert len(got["call_to"]) == n and sorted(got["call_replies"]) == [1] * n, got
    else:  # more: down the per-host tree, one reply per host holding its host's results
        assert (
            len(got["call_to"]) == 3 and {a.rsplit(":", 1)[0] for a in got["call_to"]} == heads
        ), got
        assert sorted(got["call_replies"]) == [per_host] * 3, got
    assert got["values"] == [1] * n, got
    assert got["fifo_ok"] and got["final"] == [21] * n, got
    # the stream's dead position failed, the others answered, promptly
    assert got["stream_values"] == n - 1 and len(got["stream_errors"]) == 1, got
    assert got["stream_s"] < 15.0, got
    assert proc.wait(30.0) == 0, proc.stderr.read()[-3000:] if proc.stderr else ""


PEER_TIMEOUT_S = 1.5
#: the in-flight casts reach the hosts below the lost forwarder this soon after the loss: a
#: SIGKILL is seen on the connection reset, a cut link within the heartbeat bound (plus slack
#: for this loaded 2-core machine)
LOSS_BOUND_S = {"kill_host": 1.0, "cut_link": PEER_TIMEOUT_S + 1.0}


@pytest.mark.parametrize("hosts", [10], indirect=True)
@pytest.mark.parametrize("fault", ["kill_host", "cut_link"])
def test_casts_in_flight_through_a_lost_forwarder_host_reach_every_healthy_host(
    request, hosts: HostNet, fault: str
) -> None:
    """10 hosts x 1 proc: the client sends to 5 heads, host 0 forwards to host 1. Casts sent
    while host 0 is frozen (SIGSTOP; then SIGKILLed) or cut off sit inside it; once it is lost
    the client re-sends them to host 1 itself: every healthy rank records every cast once and in
    order, the in-flight ``call()`` fails naming host 0's rank, the stream fails only host 0's
    position, later casts to the healthy slice reach all 9, and nothing is left running."""
    started = [_start_agent(host) for host in hosts]
    baseline = [host.pids() for host in hosts]
    env = _env()
    env["MONARCH_PEER_TIMEOUT_S"] = str(PEER_TIMEOUT_S)
    argv = [
        sys.executable,
        "-m",
        "tests.multihost.tree_fault_client",
        hosts.gateway_ip,
        ",".join(addr for _, addr in started),
    ]
    proc = subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=env, cwd=ROOT, start_new_session=True,
    )  # fmt: skip
    request.addfinalizer(lambda: kill_session(proc))
    if fault == "cut_link":
        request.addfinalizer(hosts[0].restore_link)

    def event(timeout_s: float) -> dict:
        try:
            return json.loads(_readline(proc, timeout_s))
        except (TimeoutError, EOFError) as exc:
            kill_session(proc)
            err = proc.stderr.read() if proc.stderr else ""
            raise AssertionError(f"{exc}; the client's stderr:\n{err[-6000:]}") from None

    def say(line: str) -> None:
        assert proc.stdin is not None
        proc.stdin.write(line + "\n")
        proc.stdin.flush()

    act = event(120.0)
    assert act["event"] == "act", act
    assert act["top"] == [0, 2, 4, 6, 8] and act["below0"] == [1], act  # host 0 forwards to 1
    assert act["before"] == [[0, 1]] * 10, act
    if fault == "kill_host":
        hosts[0].freeze()  # its kernel still takes what is sent: the casts wait inside it
    else:
        hosts[0].cut_link()
    say("broken")
    sent = event(30.0)
    assert sent["event"] == "sent", sent
    lost_at = time.monotonic()
    if fault == "kill_host":
        hosts[0].kill_all()
    say(repr(lost_at))
    after = event(90.0)
    assert after["event"] == "after", after
    bound = LOSS_BOUND_S[fault]
    # the in-flight call() fails at once (its results were to be reduced at host 0), naming host
    # 0's rank, not a healthy one
    assert after["call_error"] and "'hosts': 0" in after["call_error"], after
    assert 0 <= after["call_s"] < bound, after
    # the stream: host 0's position failed, the 9 others answered, host 1's after the re-send
    assert len(after["stream_errors"]) == 1 and "'hosts': 0" in after["stream_errors"][0], after
    assert len(after["stream_values_s"]) == 9 and max(after["stream_values_s"]) < bound, after
    assert after["resent"] >= 4, after  # 2 broadcasts, the call, the stream: to host 1
    # the whole mesh is refused at once; its healthy slice gets every cast, host 1 included
    assert after["whole_error"] and after["whole_s"] < 0.5, after
    assert after["after"] == [[0, 1, 2, 3, 4, 5, 6]] * 9, after
    assert after["after_s"] < 5.0 and after["streamed_after"] == 9, after
    assert after["shutdown_s"] < 5.0, after
    assert proc.wait(20.0) == 0, proc.stderr.read()[-3000:] if proc.stderr else ""
    print(
        f"\n{fault}: the in-flight call() failed {after['call_s'] * 1e3:.0f} ms after the loss; host 1's "
        f"stream answer (re-sent) arrived {max(after['stream_values_s']) * 1e3:.0f} ms after it; "
        f"{after['resent']} re-sends"
    )
    if fault == "cut_link":
        hosts[0].restore_link()  # healed: its agent has ended the client's session
    healthy = list(zip(hosts, baseline))[1:] if fault == "kill_host" else list(zip(hosts, baseline))
    for host, before in healthy:
        assert _wait_for(lambda h=host, b=before: h.pids() == b, PEER_TIMEOUT_S + 10.0), (
            host.name,
            host.pids(),
            before,
        )
