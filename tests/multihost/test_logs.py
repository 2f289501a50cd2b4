"""Log forwarding across namespace hosts: lines printed by procs under a host agent reach the
client prefixed with that host, folded across hosts, and a remote proc's crash names its log file
(written on its host) and quotes its last lines."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from monarch.actor import Actor, endpoint

from tests.multihost.netns import HostNet
from tests.multihost.test_host_agents import ROOT, _env, _start_agent

pytestmark = pytest.mark.multihost


class LogPrinter(Actor):
    @endpoint
    def say(self, text: str) -> list:
        print(text)
        return [socket.gethostname(), os.getpid()]

    @endpoint
    def loss(self) -> None:
        print(f"loss 0.{os.getpid() % 1000}")

    @endpoint
    def abort(self) -> None:
        print("remote last words", flush=True)
        os.abort()


CLIENT = """
import asyncio, os, sys
from monarch.actor import attach_to_workers, enable_transport

enable_transport(f"tcp://{sys.argv[1]}:0")
hm = attach_to_workers(workers=sys.argv[2].split(","), ca=None)
hm.initialized.get(30.0)
pm = hm.spawn_procs(per_host={"gpus": 2})
from tests.multihost.test_logs import LogPrinter  # importable on the agents' hosts too
m = pm.spawn("printer", LogPrinter)
for r in range(4):
    host, pid = m.slice(hosts=r // 2, gpus=r % 2).say.call_one(f"hello from point {r}").get(30.0)
    print("POINT", r, host, pid, flush=True)
asyncio.run(pm.logging_option(aggregate_window_sec=60))
m.loss.call().get(30.0)
try:
    m.slice(hosts=1, gpus=1).abort.call_one().get(30.0)
except Exception as exc:
    print("ERROR", str(exc).replace("\\n", " | "), flush=True)
pm.stop().get(30.0)
"""


def test_lines_of_remote_procs_arrive_prefixed_with_their_host_and_fold_across_hosts(
    hosts: HostNet, tmp_path: Path
) -> None:
    agents = [_start_agent(host) for host in hosts]
    try:
        script = tmp_path / "client.py"
        script.write_text(textwrap.dedent(CLIENT))
        env = _env()
        res = subprocess.run(
            [sys.executable, str(script), hosts.gateway_ip, ",".join(addr for _, addr in agents)],
            capture_output=True, text=True, timeout=120, env=env, cwd=ROOT,
        )  # fmt: skip
    finally:
        for proc, _ in agents:
            proc.kill()
            proc.wait(10.0)
    out = res.stdout
    points = re.findall(r"^POINT (\d) (\S+) (\d+)$", out, re.M)
    assert [(int(r), h) for r, h, _ in points] == [(0, "h0"), (1, "h0"), (2, "h1"), (3, "h1")], (
        out + res.stderr
    )
    for r, host, pid in points:
        assert f"[{host} rank={r} pid={pid}] hello from point {r}\n" in out, out
    # four procs' "loss 0.N" lines fold into one, with the ranks of each host
    assert re.search(
        r"^\[4 similar log lines, ranks 0-1 on h0; ranks 2-3 on h1\] loss 0\.\d+$", out, re.M
    ), out
    err = re.search(r"^ERROR (.*)$", out, re.M)
    assert err, out + res.stderr
    assert "host h1" in err.group(1) and "remote last words" in err.group(1), err.group(1)
    path = re.search(r"log file (\S+?\.log)", err.group(1))
    assert path, err.group(1)
    assert "h1" in path.group(1)  # named after the proc, which is named after its host
    assert (
        "remote last words" in Path(path.group(1)).read_text()
    )  # namespaces share the file system
