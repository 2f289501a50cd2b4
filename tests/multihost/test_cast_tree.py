"""Casts across namespace hosts: a broadcast goes down a per-host tree (one frame per host from the
client; the host's head forwards to its other procs); a ``call()`` to at most FANOUT procs goes
straight to them, and to more down the per-host tree, each head reducing its host's results into
one reply; per-sender FIFO holds between tree casts and direct calls; a stream survives a proc's
death (through the tree: a non-head's)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.multihost.netns import HostNet
from tests.multihost.procs import kill_session
from tests.multihost.test_host_agents import ROOT, _env, _readline, _start_agent

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
