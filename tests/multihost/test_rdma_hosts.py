"""``monarch.rdma`` between namespace hosts: the owner of an ``RDMABuffer`` on h0, its reader on h1.

Real agents (``monarch host serve``) in two network namespaces, the client (``rdma_client.py``)
in the root namespace. A reader on the owner's host uses CMA (``process_vm_readv``). The two
"hosts" share one kernel, so CMA could reach across them too; it must not be chosen: processes in different network namespaces are on
different hosts, and transfers go over the owner's RDMA TCP server, which must listen on the
address its host is reached at (not 127.0.0.1). Reads and writes are checked byte for byte at
1 MiB and 64 MiB; then h0 is SIGKILLed in the middle of a read (its link slowed with ``tc tbf``
so that the read takes seconds, and the kill waits until the owner's socket has bytes in
flight): the reader's read must fail with an error, not hang. Every wait is bounded.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from tests.multihost.netns import Host, HostNet
from tests.multihost.test_host_agents import ROOT, _env, _readline, _start_agent

pytestmark = [pytest.mark.multihost, pytest.mark.rdma]

SIZES = (1 << 20, 64 << 20)
#: h0's egress while the kill test reads 64 MiB: about 3 s at 160 Mbit/s
SLOW_RATE = "160mbit"
#: the read must end this soon after h0 is killed (its socket closes at once; far under 60 s)
READ_END_BOUND_S = 20.0


class _Client:
    def __init__(self, request: pytest.FixtureRequest, net: HostNet, agents: list[str]) -> None:
        argv = [
            sys.executable,
            "-m",
            "tests.multihost.rdma_client",
            net.gateway_ip,
            ",".join(agents),
            ",".join(str(s) for s in SIZES),
        ]
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=_env(), cwd=ROOT, start_new_session=True,
        )  # fmt: skip
        request.addfinalizer(self.kill)

    def event(self, timeout_s: float = 120.0) -> dict:
        try:
            return json.loads(_readline(self.proc, timeout_s))
        except (TimeoutError, EOFError) as exc:
            self.kill()
            err = self.proc.stderr.read() if self.proc.stderr is not None else ""
            raise AssertionError(
                f"no event from the client ({exc}); stderr:\n{err[-6000:]}"
            ) from None

    def tell(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10.0)


def _send_queue(host: Host, port: int) -> int:
    """Bytes queued on ``host``'s established TCP sockets with local port ``port`` (``ss``)."""
    out = subprocess.run(
        ["ss", "-N", host.netns, "-tnH", "state", "established", f"( sport = :{port} )"],
        capture_output=True, text=True, timeout=10.0, check=True,
    ).stdout  # fmt: skip
    return sum(int(line.split()[1]) for line in out.splitlines() if line.split())


def _slow_link(host: Host) -> None:
    subprocess.run(
        ["tc", "-n", host.netns, "qdisc", "add", "dev", "eth0", "root", "tbf",
         "rate", SLOW_RATE, "burst", "64kb", "latency", "2s"],
        capture_output=True, text=True, timeout=10.0, check=True,
    )  # fmt: skip


@pytest.mark.skipif(
    shutil.which("tc") is None or shutil.which("ss") is None, reason="needs tc and ss (iproute2)"
)
def test_an_actor_on_another_host_reads_and_writes_a_buffer_over_tcp_and_fails_when_its_host_dies(
    request, hosts: HostNet
) -> None:
    agents = [_start_agent(host)[1] for host in hosts]
    client = _Client(request, hosts, agents)
    ev = client.event()
    assert ev["event"] == "same_host", ev
    assert ev["pulled"]["host"] == "h0" and ev["pulled"]["backend"] == "cma", ev  # one host: cma
    assert ev["pulled"]["ok"] and ev["written_ok"], ev
    for size in SIZES:
        ev = client.event()
        assert ev["event"] == "size" and ev["size"] == size, ev
        pulled, owner = ev["pulled"], ev["owner"]
        assert owner["host"] == "h0" and pulled["host"] == "h1", ev
        assert pulled["backend"] == "tcp", ev  # not cma: another host, though the same kernel
        assert owner["tcp_host"] == hosts[0].ip, ev  # the address h1 reaches h0 at
        assert pulled["ok"], f"{size} bytes read from h0 differ from the owner's"
        assert ev["written_ok"], f"{size} bytes written from h1 differ in the owner's memory"
        print(f"\nread of {size >> 20} MiB from h0 to h1 over tcp: {pulled['read_s'] * 1e3:.1f} ms")
    ev = client.event()
    assert ev["event"] == "kill", ev
    port = ev["owner"]["tcp_port"]
    _slow_link(hosts[0])
    client.tell()
    assert client.event()["event"] == "reading"
    deadline = time.monotonic() + 60.0
    while _send_queue(hosts[0], port) == 0:  # the owner is sending: the read is under way
        assert time.monotonic() < deadline, "the read of h0's buffer never started sending"
        time.sleep(0.01)  # poll interval of a bounded wait on a real condition (ss)
    hosts[0].kill_all()
    killed_at = time.monotonic()
    client.tell()
    ended = client.event(READ_END_BOUND_S + 30.0)
    assert ended["event"] == "read_ended", ended
    result = ended["result"]
    assert result["error"].startswith("RDMAError"), result  # not a short or a successful read
    assert time.monotonic() - killed_at < READ_END_BOUND_S, ended
    assert any("h0" in f for f in ended["failures"]), ended  # the owner's mesh failed, naming h0
    print(
        f"\nread of 64 MiB ended {result['after_s']:.2f} s after it began: {result['error'][:200]}"
    )
    assert client.proc.wait(30.0) == 0, (
        client.proc.stderr.read()[-3000:] if client.proc.stderr else ""
    )
