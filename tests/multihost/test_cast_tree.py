"""Casts across namespace hosts go down a per-host tree: one frame per host from the client, the
host's head forwards to its other procs and reduces their ``call()`` results into one reply;
per-sender FIFO holds between these tree casts and direct calls."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys

import pytest

from tests.multihost.netns import HostNet
from tests.multihost.test_host_agents import ROOT, _env, _readline, _start_agent

pytestmark = pytest.mark.multihost


@pytest.mark.parametrize("hosts", [3], indirect=True)
def test_a_cast_crosses_each_host_boundary_once_and_call_is_reduced_per_host(
    request, hosts: HostNet
) -> None:
    agents = [_start_agent(host)[1] for host in hosts]
    argv = [sys.executable, "-m", "tests.multihost.tree_client", hosts.gateway_ip, ",".join(agents)]
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
        cwd=ROOT,
        start_new_session=True,
    )

    def kill() -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10.0)

    request.addfinalizer(kill)
    try:
        got = json.loads(_readline(proc, 90.0))
    except (TimeoutError, EOFError) as exc:
        kill()
        raise AssertionError(
            f"{exc}; its stderr:\n{(proc.stderr.read() if proc.stderr else '')[-6000:]}"
        ) from None
    # 6 procs on 3 hosts: the client sent each cast to one proc per host (its first), not to all 6
    heads = {f"tcp:{host.ip}" for host in hosts}
    for sent in (got["broadcast_to"], got["call_to"]):
        assert len(sent) == 3 and {a.rsplit(":", 1)[0] for a in sent} == heads, got
    assert sorted(got["call_replies"]) == [2, 2, 2], got  # one reply per host, each with 2 results
    assert got["values"] == [1] * 6, got
    assert got["fifo_ok"] and got["final"] == [21] * 6, got
    # the stream's dead position failed (naming the lost proc), the 5 others answered, promptly
    assert got["stream_values"] == 5 and len(got["stream_errors"]) == 1, got
    assert got["stream_s"] < 15.0, got
    assert proc.wait(30.0) == 0, proc.stderr.read()[-3000:] if proc.stderr else ""
