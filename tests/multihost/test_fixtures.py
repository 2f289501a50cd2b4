"""Smoke tests of the machines-in-a-box fixtures, with plain commands only (no monarch runtime)."""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests.multihost import netns
from tests.multihost.netns import Host, HostNet

pytestmark = pytest.mark.multihost

# Answers every connection with "<its hostname> saw <client's hostname> from <client's IP>".
SERVER = r"""
import socket, sys
srv = socket.create_server((sys.argv[1], 0))
print(srv.getsockname()[1], flush=True)
while True:
    conn, peer = srv.accept()
    with conn:
        name = b""
        while chunk := conn.recv(256):
            name += chunk
        conn.sendall(f"{socket.gethostname()} saw {name.decode()} from {peer[0]}".encode())
"""
CLIENT = r"""
import socket, sys
ip, port, timeout_s = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
try:
    with socket.create_connection((ip, port), timeout=timeout_s) as conn:
        conn.sendall(socket.gethostname().encode())
        conn.shutdown(socket.SHUT_WR)
        reply = b""
        while chunk := conn.recv(256):
            reply += chunk
except OSError as exc:
    print(f"{type(exc).__name__}: {exc}")
    sys.exit(1)
print(reply.decode())
"""


def _readline(proc: subprocess.Popen, timeout_s: float) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout_s)
    if not ready:
        raise TimeoutError(f"no line from {proc.args[-3:]} in {timeout_s} s")
    return proc.stdout.readline()


def _start_server(host: Host) -> int:
    proc = host.popen([sys.executable, "-c", SERVER, host.ip], stdout=subprocess.PIPE, text=True)
    return int(_readline(proc, 20.0))


def _connect(client: Host, server: Host, port: int, timeout_s: float = 5.0):
    argv = [sys.executable, "-c", CLIENT, server.ip, str(port), str(timeout_s)]
    return client.run(argv, timeout_s=timeout_s + 20.0)


@pytest.mark.parametrize("hosts", [2, 3], indirect=True)
def test_every_host_reaches_every_other_over_tcp(hosts: HostNet) -> None:
    ports = {host.name: _start_server(host) for host in hosts}
    for server in hosts:
        for client in hosts:
            if client is server:
                continue
            result = _connect(client, server, ports[server.name])
            assert result.returncode == 0, result.stdout + result.stderr
            # the server saw the client's own IP: the packets crossed the bridge
            assert result.stdout.strip() == f"{server.name} saw {client.name} from {client.ip}"


@pytest.mark.parametrize("hosts", [3], indirect=True)
def test_hosts_have_distinct_hostnames_that_resolve_to_their_ips(hosts: HostNet) -> None:
    machine = socket.gethostname()
    names = [host.run(["hostname"], check=True).stdout.strip() for host in hosts]
    assert names == ["h0", "h1", "h2"]
    assert machine not in names
    assert socket.gethostname() == machine  # the UTS namespace kept the change inside
    for host in hosts:
        for other in hosts:
            resolved = host.run(["getent", "hosts", other.name], check=True).stdout.split()
            assert resolved == [other.ip, other.name]
        own = host.run(["ip", "-4", "-o", "addr", "show", "dev", "eth0"], check=True).stdout
        assert f"inet {host.ip}/24" in own


@pytest.mark.parametrize("hosts", [3], indirect=True)
def test_cut_link_fails_a_connection_and_restore_link_heals_it(hosts: HostNet) -> None:
    h0, h1, h2 = hosts
    port0, port2 = _start_server(h0), _start_server(h2)
    assert _connect(h1, h0, port0).returncode == 0

    h0.cut_link()
    cut = _connect(h1, h0, port0, timeout_s=1.0)
    assert cut.returncode == 1, cut.stdout
    assert _connect(h1, h2, port2).returncode == 0  # only h0 is partitioned

    h0.restore_link()
    deadline = time.monotonic() + 15.0
    healed = _connect(h1, h0, port0, timeout_s=1.0)
    while healed.returncode != 0 and time.monotonic() < deadline:
        healed = _connect(h1, h0, port0, timeout_s=1.0)
    assert healed.returncode == 0, healed.stdout
    assert healed.stdout.strip() == f"h0 saw h1 from {h1.ip}"


def test_kill_all_leaves_no_process_in_the_host(hosts: HostNet) -> None:
    h0, h1 = hosts
    started = [
        h0.popen(["sleep", "300"]),
        # a child that leaves the process group (setsid), one that stays, and the shell
        h0.popen(["sh", "-c", "setsid sleep 301 & sleep 302 & wait"]),
    ]
    _start_server(h0)
    survivor = h1.popen(["sleep", "303"])
    deadline = time.monotonic() + 10.0
    while len(h0.pids()) < 5 and time.monotonic() < deadline:
        time.sleep(0.01)  # poll interval of a bounded wait on a real condition
    assert len(h0.pids()) == 5

    h0.kill_all()

    assert h0.pids() == set()
    assert [proc.returncode for proc in started] == [-signal.SIGKILL] * 2
    listed = subprocess.run(
        ["ip", "netns", "pids", h0.netns], capture_output=True, text=True, timeout=10, check=True
    )
    assert listed.stdout.split() == []
    assert survivor.poll() is None  # the other host is untouched
    assert h0.run(["hostname"], check=True).stdout.strip() == "h0"  # and h0 is usable again


def test_close_removes_namespaces_links_processes_and_state() -> None:
    reason = netns.unavailable_reason()
    if reason:
        pytest.skip(reason)
    net = HostNet(2)
    try:
        net[0].popen(["sleep", "300"])
        assert net.leftovers()  # namespaces, links and state dir exist while open
    finally:
        net.close()
    assert net.leftovers() == []
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10)
    assert net.prefix not in listed.stdout


CRASHING_RUN = r"""
import os, time
from tests.multihost.netns import HostNet
net = HostNet(2)
proc = net[0].popen(["sleep", "300"], stdout=-3, stderr=-3)  # DEVNULL: no pipe held open
deadline = time.monotonic() + 10
while proc.pid not in net[0].pids() and time.monotonic() < deadline:
    time.sleep(0.01)
print(net.prefix, proc.pid, flush=True)
os.kill(os.getpid(), 9)  # no finalizer, no atexit: a crashed test run
"""


def test_leftovers_of_a_killed_run_are_removed(request: pytest.FixtureRequest) -> None:
    reason = netns.unavailable_reason()
    if reason:
        pytest.skip(reason)
    crashed = subprocess.run(
        [sys.executable, "-c", CRASHING_RUN],
        cwd=request.config.rootpath,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    prefix, sleep_pid = crashed.stdout.split()
    try:
        left = netns.leftovers_of(prefix)
        assert f"netns {prefix}-h0" in left and f"link {prefix}-b" in left
        assert os.path.exists(f"/proc/{sleep_pid}")
    finally:
        removed = netns.remove_leftovers()
    assert f"netns {prefix}-h0" in removed
    assert netns.leftovers_of(prefix) == []
    deadline = time.monotonic() + 10.0
    while os.path.exists(f"/proc/{sleep_pid}") and time.monotonic() < deadline:
        time.sleep(0.01)  # the orphan is SIGKILLed; wait (bounded) for init to reap it
    assert not os.path.exists(f"/proc/{sleep_pid}")


def test_srun_on_two_nodes_prints_both_node_names(slurm_cluster) -> None:
    result = slurm_cluster.run(["srun", "-N", "2", "hostname"], timeout_s=60.0)
    assert result.returncode == 0, result.stderr
    assert sorted(result.stdout.split()) == ["h0", "h1"]


def test_sbatch_job_runs_on_each_node(slurm_cluster, tmp_path) -> None:
    jobs = {}
    for node in slurm_cluster.nodes:
        out = tmp_path / f"{node}.out"
        submit = [
            "sbatch", "--parsable", "-N", "1", "-w", node, "-o", str(out),
            "--wrap", 'echo "$(hostname) $SLURM_JOB_NODELIST"',
        ]  # fmt: skip
        result = slurm_cluster.run(submit, timeout_s=30.0, check=True)
        jobs[node] = (result.stdout.strip().split(";")[0], out)
    for node, (job_id, out) in jobs.items():
        assert slurm_cluster.wait_job(job_id, timeout_s=60.0) == "COMPLETED"
        assert out.read_text().split() == [node, node]


def test_sbatch_job_over_two_nodes_runs_a_step_on_each(slurm_cluster, tmp_path) -> None:
    out = tmp_path / "job.out"
    script = "scontrol show hostnames $SLURM_JOB_NODELIST; srun -l hostname | sort"
    submit = ["sbatch", "--parsable", "-N", "2", "-o", str(out), "--wrap", script]
    job_id = slurm_cluster.run(submit, timeout_s=30.0, check=True).stdout.strip().split(";")[0]
    assert slurm_cluster.wait_job(job_id, timeout_s=60.0) == "COMPLETED"
    # the batch script (on h0) sees this cluster's config: agents can run scontrol there
    assert out.read_text().splitlines() == ["h0", "h1", "0: h0", "1: h1"]


def test_ssh_runs_a_command_in_the_namespace_host(sshd_server, hosts: HostNet) -> None:
    from_root = sshd_server.run(["hostname"], timeout_s=30.0)
    assert from_root.returncode == 0, from_root.stderr
    assert from_root.stdout.strip() == hosts[0].name
    from_h1 = hosts[1].run(sshd_server.ssh_argv("hostname"), timeout_s=30.0)
    assert from_h1.returncode == 0, from_h1.stderr
    assert from_h1.stdout.strip() == hosts[0].name


@pytest.mark.parametrize("module_hosts", [3], indirect=True)
def test_srun_on_three_nodes_runs_one_task_per_node(slurm_cluster) -> None:
    result = slurm_cluster.run(["srun", "-N", "3", "-l", "hostname"], timeout_s=60.0)
    assert result.returncode == 0, result.stderr
    assert sorted(result.stdout.splitlines()) == ["0: h0", "1: h1", "2: h2"]
