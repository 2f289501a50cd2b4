"""Across namespace hosts: ours vs torchmonarch 0.7.0 vs raw TCP, issue 12's Speed rows.

``python -m benchmarks.multihost_bench [--rounds 2] [--fault-timeout-s 20] [--no-torchmonarch]
[--sessions main,silent,fanout]``
(root: it makes network namespaces). One run, several interleaved rounds, medians.

Four "hosts" are network namespaces on one bridge (``tests/multihost/netns.py``); every client
runs in the root namespace, on the bridge's address. For each system a round starts real host
agents in the namespaces -- ours: ``monarch host serve`` (cluster token); torchmonarch: its
``run_worker_loop_forever`` (unauthenticated) -- and a fresh client process under that system's
interpreter that calls ``enable_transport("tcp://<bridge>:0")`` and ``attach_to_workers``. The
client code is the same for both (the Monarch API; the actor is ``benchmarks/_mh_actors.py``).

Sessions of a round, each with fresh agents:

- ``main`` (h0, h1): attach + ``spawn_procs(per_host={"gpus": 2})`` + ``spawn`` until the first
  ``call()`` answered (s); ``call_one`` round trip to a proc on h1 (median, us); ``call()`` to the
  2 hosts x 2 procs (median, us); a 16 MiB float32 tensor echoed by a proc on h1 (median round
  trip; MiB/s = 16 MiB / round trip); then a call in flight to h0, every process of h0
  SIGKILLed: time until the caller's error (``> N s`` when none came within ``--fault-timeout-s``)
  and until the first ``MeshFailure`` reached the client (its ``unhandled_fault_hook`` records
  it instead of exiting).
- ``silent`` (h0, h1): a call in flight to h0, h0's link cut (packets dropped, nothing reset):
  time until the caller's error and the MeshFailure, bounded the same way.
- ``fanout`` (h0..h3, ours only): ``spawn_procs(per_host={"gpus": 16})`` (64 procs), then
  ``broadcast`` to all 64: the frames the client sends per message, counted by wrapping
  ``Router.send`` in the client (control frames such as heartbeats excluded). torchmonarch's
  client is Rust: its frames cannot be counted from Python (``-``).
- ``raw`` (h1): a blocking-socket TCP echo server in h1, the client in the root namespace (the
  same path as the client -> h1 calls): 64-byte round trip and 16 MiB round trip (the server
  receives the whole message, then sends it back, as an endpoint does).

Hygiene: every process carries a run token; after each session the client's process group and
every process with the token are killed, and every process in the namespaces; the namespaces
are removed at the end, on failure too. It is a benchmark: nothing is asserted on the figures.
Prints the table and, last, ``BENCH-RESULT <json>``; ``--markdown PATH`` writes the table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import select
import signal
import socket
import statistics
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_VENV = Path.home() / ".cache" / "monarch-idl" / "torchmonarch-venv"
TOKEN = "multihost-bench-token-0123456789abcdef"
MIB = 1 << 20
TORCHMONARCH_AGENT_PORT = 26600  # inside each namespace: nothing else listens there
_LEN = struct.Struct("!Q")
#: a client phase that takes longer hangs: it dumps its threads' tracebacks and exits (s)
CLIENT_PHASE_S = 100.0


# ----------------------------------------------------------------------------------------------
# The client (runs under ours or torchmonarch's interpreter; stdlib + monarch.actor + torch)


def _emit(**msg: Any) -> None:
    print(json.dumps(msg), flush=True)


_PHASES: dict[str, float] = {}


def _attach(gateway: str, agents: list[str], per_host: int) -> tuple[Any, Any, float]:
    """Attach, spawn ``per_host`` procs per host and one actor per proc, until a ``call()``
    answered; the time of each step goes to ``_PHASES`` (torchmonarch's spawns return at once
    and complete in later steps: only the total compares)."""
    from monarch.actor import attach_to_workers, enable_transport

    from benchmarks._mh_actors import Probe

    t0 = t = time.perf_counter()

    def phase(name: str) -> None:
        nonlocal t
        now = time.perf_counter()
        _PHASES[name] = now - t
        t = now

    enable_transport(f"tcp://{gateway}:0")
    hm = attach_to_workers(workers=agents, ca="trust_all_connections")
    hm.initialized.get(120.0)
    phase("attach_s")
    procs = hm.spawn_procs(per_host={"gpus": per_host})
    phase("spawn_procs_s")
    mesh = procs.spawn("probe", Probe)
    phase("spawn_s")
    mesh.ping.call(0).get(120.0)
    phase("first_call_s")
    return hm, mesh, time.perf_counter() - t0


def _median_s(fn: Callable[[], Any], n: int) -> float:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


_FAULTS: list[float] = []  # monotonic times of the MeshFailures that reached the client


def _record_faults() -> None:
    """Record MeshFailures instead of exiting (both runtimes' default hook ends the client)."""
    import monarch.actor

    monarch.actor.unhandled_fault_hook = lambda failure: _FAULTS.append(time.monotonic())


def _wait_broken(mesh: Any, fault_timeout_s: float) -> None:
    """Keep a call in flight to h0, let the orchestrator break h0, time the caller's error
    (and the first MeshFailure that reached the client, the owner of the mesh)."""
    fut = mesh.slice(hosts=0, gpus=0).sleep.call_one(fault_timeout_s + 60.0)
    mesh.slice(hosts=0, gpus=1).ping.call_one(0).get(30.0)  # h0 is answering: the sleep runs
    _emit(event="break")
    broken_at = float(sys.stdin.readline())
    import faulthandler

    faulthandler.dump_traceback_later(fault_timeout_s + CLIENT_PHASE_S, exit=True)
    try:
        fut.get(fault_timeout_s)
        _emit(
            event="broken", error="", error_type="", elapsed_s=None, returned=True, failure_s=None
        )
        return
    except Exception as exc:
        elapsed = time.monotonic() - broken_at
        name = type(exc).__name__
        timed_out = "Timeout" in name and elapsed >= 0.95 * fault_timeout_s
        _emit(
            event="broken",
            error=str(exc)[:300],
            error_type=name,
            elapsed_s=None if timed_out else elapsed,
            returned=False,
            failure_s=_FAULTS[0] - broken_at if _FAULTS else None,
        )


def _count_frames() -> dict[str, int]:
    """Wrap ``Router.send`` (ours only): frames this client sends, by kind, while counting."""
    from monarch._mesh.outgoing import ReplyPart, TemplateMessage
    from monarch._mesh.router import Router

    counts: dict[str, int] = {}
    orig = Router.send

    def send(self: Any, addr: str, msg: Any, bufs: list[Any], **kw: Any) -> None:
        t = type(msg)
        kind = msg.base.kind if t is TemplateMessage else "reply" if t is ReplyPart else msg.kind
        key = f"{kind}|{addr}"
        counts[key] = counts.get(key, 0) + 1
        orig(self, addr, msg, bufs, **kw)

    Router.send = send  # type: ignore[method-assign]  # benchmark instrumentation, client only
    return counts


def _cast_frames(before: dict[str, int], after: dict[str, int]) -> tuple[int, set[str]]:
    frames, dests = 0, set()
    for key, n in after.items():
        kind, addr = key.split("|", 1)
        diff = n - before.get(key, 0)
        if diff and "control" not in kind.lower():
            frames += diff
            dests.add(addr)
    return frames, dests


def client(mode: str, gateway: str, agents: list[str], calls: int, fault_timeout_s: float) -> None:
    """One client session (see the module docstring); JSON lines on stdout, syncs on stdin.

    A client that hangs dumps every thread's traceback to stderr and exits before the
    orchestrator's wait ends, so the note it leaves says where.
    """
    import faulthandler

    faulthandler.dump_traceback_later(CLIENT_PHASE_S, exit=True)
    _record_faults()
    if mode == "fanout":
        counts = _count_frames()
        _, mesh, attach_s = _attach(gateway, agents, 16)
        n = len(list(mesh.ping.call(0).get(120.0).items()))
        before = dict(counts)
        mesh.count.call().get(120.0)
        call_frames, _ = _cast_frames(before, dict(counts))
        k = 50
        before = dict(counts)
        for i in range(k):
            mesh.note.broadcast(i)
        seen = [v for _, v in mesh.count.call().get(120.0).items()]
        frames, dests = _cast_frames(before, dict(counts))
        _emit(
            event="fanout",
            procs=n,
            attach_s=attach_s,
            frames_per_broadcast=(frames - call_frames) / k,
            call_frames=call_frames,
            destinations=len(dests),
            all_arrived=all(v == k for v in seen),
        )
        return
    _, mesh, attach_s = _attach(gateway, agents, 2)
    if mode == "main":
        import torch

        one = mesh.slice(hosts=1, gpus=0)
        for i in range(20):
            one.ping.call_one(i).get(30.0)
        call_one_s = _median_s(lambda: one.ping.call_one(1).get(30.0), calls)
        call_s = _median_s(lambda: mesh.ping.call(1).get(30.0), max(calls // 2, 10))
        tensor = torch.arange(4 * MIB, dtype=torch.float32)  # 16 MiB
        echo = mesh.slice(hosts=1, gpus=1)
        back = echo.ping.call_one(tensor).get(120.0)
        equal = bool(torch.equal(back, tensor))
        rt_s = _median_s(lambda: echo.ping.call_one(tensor).get(120.0), 5)
        _emit(
            event="measured",
            attach_s=attach_s,
            call_one_us=call_one_s * 1e6,
            call_2x2_us=call_s * 1e6,
            rt16_ms=rt_s * 1e3,
            echo_equal=equal,
            phases=_PHASES,
        )
    _wait_broken(mesh, fault_timeout_s)


# ----------------------------------------------------------------------------------------------
# The raw TCP baseline


def _recv_exact(sock: socket.socket, view: memoryview) -> None:
    got = 0
    while got < len(view):
        n = sock.recv_into(view[got:])
        if n == 0:
            raise ConnectionError("peer closed")
        got += n


def echo_server(ip: str) -> None:
    """Serve length-prefixed echoes on ``ip`` (one connection at a time); prints the port."""
    lsock = socket.socket()
    lsock.bind((ip, 0))
    lsock.listen(4)
    print(lsock.getsockname()[1], flush=True)
    buf = bytearray(16 * MIB + 64)
    while True:
        conn, _ = lsock.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        head = bytearray(_LEN.size)
        with conn:
            try:
                while True:
                    _recv_exact(conn, memoryview(head))
                    (n,) = _LEN.unpack(head)
                    view = memoryview(buf)[:n]
                    _recv_exact(conn, view)
                    conn.sendall(head)
                    conn.sendall(view)
            except (ConnectionError, OSError):
                continue


def _raw_client(ip: str, port: int, calls: int) -> dict[str, float]:
    with socket.create_connection((ip, port), timeout=60.0) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def echo(payload: bytes, into: memoryview) -> None:
            head = _LEN.pack(len(payload))
            if len(payload) <= 4096:
                sock.sendall(head + payload)
            else:  # no copy of a large payload into a new bytes object
                sock.sendall(head)
                sock.sendall(payload)
            _recv_exact(sock, into)

        small = os.urandom(64)
        sbuf = memoryview(bytearray(_LEN.size + 64))
        for _ in range(50):
            echo(small, sbuf)
        small_s = _median_s(lambda: echo(small, sbuf), calls)
        big = os.urandom(16 * MIB)
        bbuf = memoryview(bytearray(_LEN.size + 16 * MIB))
        echo(big, bbuf)
        if bytes(bbuf[_LEN.size :]) != big:
            raise RuntimeError("the raw 16 MiB echo came back different")
        big_s = _median_s(lambda: echo(big, bbuf), 5)
    return {"rtt64_us": small_s * 1e6, "rt16_ms": big_s * 1e3}


# ----------------------------------------------------------------------------------------------
# The orchestrator (root namespace, our interpreter)


#: Marks every process of a run. Not ``MONARCH_*`` (benchmarks._procs' ``MONARCH_BENCH_RUN_TOKEN``):
#: any ``MONARCH_*`` variable that is not a setting sends our runtime down its full settings path,
#: which imports pydantic in the client and every proc (~0.5 s here under load).
TOKEN_VAR = "MH_BENCH_RUN_TOKEN"


def _pids_with_token(token: str) -> set[int]:
    needle = f"{TOKEN_VAR}={token}".encode()
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            with contextlib.suppress(OSError):
                with open(f"/proc/{entry}/environ", "rb") as f:
                    if needle in f.read().split(b"\0"):
                        found.add(int(entry))
    return found


def _readline(proc: subprocess.Popen[str], timeout_s: float) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout_s)
    if not ready:
        raise TimeoutError(f"no line within {timeout_s} s")
    line = proc.stdout.readline()
    if not line:
        raise EOFError(f"ended with status {proc.wait(10.0)}")
    return line


class _Session:
    """A client process: JSON events out, lines in; killed with everything it started."""

    def __init__(self, argv: list[str], env: dict[str, str], err_path: Path) -> None:
        self.err_path = err_path
        self._err = open(err_path, "w")
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._err, text=True,
            env=env, cwd=ROOT, start_new_session=True,
        )  # fmt: skip

    def event(self, timeout_s: float) -> dict[str, Any]:
        while True:
            try:
                line = _readline(self.proc, timeout_s)
            except (TimeoutError, EOFError) as exc:
                tail = self.err_path.read_text()[-3000:]
                raise RuntimeError(f"client: {exc}; its stderr ends:\n{tail}") from None
            if line.startswith("{"):
                return json.loads(line)  # type: ignore[no-any-return]

    def tell(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def close(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10.0)
        self._err.close()


class Bench:
    """One run: the namespaces, the interpreters, the per-round values."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.token = uuid.uuid4().hex
        self.ours_py = sys.executable
        self.monarch_py = str(Path(args.venv) / "bin" / "python")
        # system -> row -> round -> value (None: no error within the fault bound)
        self.values: dict[str, dict[str, dict[int, float | None]]] = {
            "ours": {},
            "monarch": {},
            "raw": {},
        }
        self.round = 0
        self.notes: list[str] = []
        self.net: Any = None

    def env(self, ours: bool) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MONARCH_")}
        env["PYTHONPATH"] = str(ROOT)
        env[TOKEN_VAR] = self.token
        if ours:
            env["MONARCH_CLUSTER_TOKEN"] = TOKEN
        return env

    def record(self, system: str, key: str, value: float | None) -> None:
        self.values[system].setdefault(key, {})[self.round] = value

    def cleanup(self) -> None:
        """Kill every process in the namespaces and every process carrying the run token."""
        from benchmarks._procs import reap_zombies
        from tests.multihost.procs import kill_until_gone

        for host in self.net:
            with contextlib.suppress(RuntimeError):
                host.restore_link()
            with contextlib.suppress(RuntimeError):
                host.kill_all()
        kill_until_gone(lambda: _pids_with_token(self.token))
        reap_zombies()

    def start_agents(self, system: str, hosts: list[Any]) -> list[str]:
        addrs = []
        for host in hosts:
            log_path = self.net.state_dir / f"agent-{system}-{host.name}-{time.monotonic_ns()}.log"
            log = open(log_path, "w")
            if system == "ours":
                argv = [self.ours_py, "-m", "monarch.cli", "host", "serve", "--listen",
                        f"tcp://{host.ip}:0", "--log-level", "WARNING"]  # fmt: skip
            else:
                code = (
                    "from monarch.actor import run_worker_loop_forever; "
                    f"run_worker_loop_forever(address='tcp://{host.ip}:{TORCHMONARCH_AGENT_PORT}', "
                    "ca='trust_all_connections')"
                )
                argv = [self.monarch_py, "-c", code]
            host.popen(
                argv, stdout=log, stderr=subprocess.STDOUT, env=self.env(system == "ours"), cwd=ROOT
            )
            log.close()
            addrs.append((host, log_path))
        out = []
        for host, log_path in addrs:
            if system == "monarch":
                self.net.wait_tcp(host.ip, TORCHMONARCH_AGENT_PORT, 60.0)
                out.append(f"tcp://{host.ip}:{TORCHMONARCH_AGENT_PORT}")
                continue
            deadline = time.monotonic() + 60.0
            while True:
                lines = [ln for ln in log_path.read_text().splitlines() if "listening on" in ln]
                if lines:
                    out.append("tcp://" + lines[0].split()[-1][len("tcp:") :])
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"agent on {host.name} did not start: {log_path.read_text()[-2000:]}"
                    )
                time.sleep(0.02)  # poll interval of a bounded wait on the agent's log
        return out

    def session(self, system: str, mode: str) -> None:
        hosts = list(self.net)[: 4 if mode == "fanout" else 2]
        try:
            agents = self.start_agents(system, hosts)
            py = self.ours_py if system == "ours" else self.monarch_py
            argv = [py, "-m", "benchmarks.multihost_bench", "--client", mode,
                    "--gateway", self.net.gateway_ip, "--agents", ",".join(agents),
                    "--calls", str(self.args.calls), "--fault-timeout-s", str(self.args.fault_timeout_s)]  # fmt: skip
            err = self.net.state_dir / f"client-{system}-{mode}-{time.monotonic_ns()}.log"
            sess = _Session(argv, self.env(system == "ours"), err)
            try:
                self._drive(system, mode, sess)
            finally:
                sess.close()
        except Exception as exc:
            text = f"{system} {mode}: {exc}"
            # the head says what failed, the tail (a traceback's last lines) why
            self.notes.append(text if len(text) <= 1200 else f"{text[:300]} ... {text[-900:]}")
            print(
                f"  ! {text if len(text) <= 2000 else text[:300] + ' ... ' + text[-1700:]}",
                flush=True,
            )
        finally:
            self.cleanup()

    def _drive(self, system: str, mode: str, sess: _Session) -> None:
        bound = self.args.fault_timeout_s
        if mode == "fanout":
            ev = sess.event(600.0)
            self.record(system, "fanout_frames", ev["frames_per_broadcast"])
            self.record(system, "fanout_dests", ev["destinations"])
            if not ev["all_arrived"] or ev["procs"] != 64:
                self.notes.append(f"{system} fanout: {ev}")
            print(f"  {system} fanout: {ev}", flush=True)
            return
        if mode == "main":
            ev = sess.event(300.0)
            for key in ("attach_s", "call_one_us", "call_2x2_us", "rt16_ms"):
                self.record(system, key, ev[key])
            if not ev["echo_equal"]:
                self.notes.append(f"{system}: the 16 MiB tensor came back different")
            print(f"  {system} main: {ev}", flush=True)
        ev = sess.event(120.0)
        assert ev["event"] == "break", ev
        host = self.net[0]
        if mode == "main":
            # timed from the first SIGKILL: the pids are found first, then killed in a tight loop
            pids = host.pids()
            at = time.monotonic()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            host.kill_all()  # and anything forked meanwhile
        else:
            at = time.monotonic()
            host.cut_link()
        try:
            sess.tell(repr(at))
        except BrokenPipeError:
            status = sess.proc.wait(10.0)
            tail = sess.err_path.read_text()[-1500:]
            raise RuntimeError(
                f"the client exited (status {status}) when h0 broke: {tail}"
            ) from None
        ev = sess.event(bound + 60.0)
        key = "kill_ms" if mode == "main" else "silent_s"
        elapsed = ev["elapsed_s"]
        scale = 1e3 if mode == "main" else 1.0
        self.record(system, key, None if elapsed is None else elapsed * scale)
        failure = ev.get("failure_s")
        self.record(system, key + "_failure", None if failure is None else failure * scale)
        print(
            f"  {system} {mode} -> {ev['error_type']} after {elapsed} s: {ev['error'][:600]}",
            flush=True,
        )

    def raw(self) -> None:
        host = self.net[1]
        try:
            proc = host.popen(
                [self.ours_py, "-m", "benchmarks.multihost_bench", "--echo-server", host.ip],
                stdout=subprocess.PIPE, text=True, env=self.env(False), cwd=ROOT,
            )  # fmt: skip
            port = int(_readline(proc, 60.0))
            res = _raw_client(host.ip, port, self.args.calls)
            self.record("raw", "call_one_us", res["rtt64_us"])
            self.record("raw", "rt16_ms", res["rt16_ms"])
            print(f"  raw: {res}", flush=True)
        finally:
            self.cleanup()

    def run(self) -> None:
        from benchmarks._procs import become_subreaper
        from tests.multihost.netns import HostNet, remove_leftovers

        become_subreaper()
        remove_leftovers()
        systems = ["ours"] + ([] if self.args.no_torchmonarch else ["monarch"])
        with HostNet(4) as net:
            self.net = net
            try:
                for r in range(self.args.rounds):
                    self.round = r
                    print(f"round {r + 1}/{self.args.rounds}", flush=True)
                    self.raw()
                    order = systems if r % 2 == 0 else systems[::-1]
                    for system in order:
                        for mode in ("main", "silent"):
                            if mode in self.args.sessions:
                                self.session(system, mode)
                    if "fanout" in self.args.sessions and not self.args.no_fanout:
                        self.session("ours", "fanout")
            finally:
                self.cleanup()
        left = net.leftovers()
        if left:
            self.notes.append(f"left behind: {left}")


# ----------------------------------------------------------------------------------------------
# The table

ROWS: list[tuple[str, str, str, str, str]] = [
    # key, label, unit, better, target (ours/monarch unless marked)
    ("call_one_us", "call_one round trip, client -> proc on h1", "us", "lower", "<= 0.35x monarch"),
    ("call_2x2_us", "call() to 2 hosts x 2 procs", "us", "lower", "<= 0.35x monarch"),
    ("rt16_mib_s", "16 MiB tensor round trip (16 MiB / RTT)", "MiB/s", "higher", ">= 0.7x raw"),
    ("rt16_ms", "16 MiB tensor round trip time", "ms", "lower", ""),
    ("attach_s", "attach + spawn_procs(gpus=2) x 2 hosts + first answer", "s", "lower", "<= 0.4x monarch"),
    ("kill_ms", "SIGKILL of a host -> caller error", "ms", "lower", "<= 50 ms"),
    ("kill_ms_failure", "SIGKILL of a host -> MeshFailure at the client (owner)", "ms", "lower", ""),
    ("silent_s", "silent host (link cut) -> caller error", "s", "lower", "<= 3 s"),
    ("silent_s_failure", "silent host (link cut) -> MeshFailure at the client (owner)", "s", "lower", ""),
    ("fanout_frames", "broadcast to 64 procs / 4 hosts: client frames per message", "frames", "lower", "<= 4 (one per host; fan-out 8)"),
]  # fmt: skip


def _median(values: list[float | None]) -> tuple[float | None, bool]:
    """Median of the rounds' values; a None (no error within the bound) counts as infinite."""
    if not values:
        return None, False
    inf = [float("inf") if v is None else v for v in values]
    m = statistics.median(inf)
    return (None, True) if m == float("inf") else (m, False)


def _ratio(ours: dict[int, float | None], other: dict[int, float | None], scale: float) -> str:
    """Median over the rounds both systems finished of ours / other in that round (the load
    swings from round to round: a ratio within one round cancels most of it). A round where
    the other gave no error within the bound (``scale`` = the bound in the row's unit) counts
    as ours / bound, an upper bound on the ratio, shown as ``< Nx``."""
    pairs = [(ours[r], other[r]) for r in sorted(ours) if r in other and ours[r] is not None]
    if not pairs:
        return "-"
    ratios = [(a / b if b is not None else a / scale) for a, b in pairs if b != 0 and a is not None]
    if not ratios:
        return "-"
    bounded = any(b is None for _, b in pairs)
    return f"{'< ' if bounded else ''}{statistics.median(ratios):.3g}x"


def _fmt(v: float | None, over: bool, bound: float, unit: str) -> str:
    if over:
        return f"> {bound:g} s"
    if v is None:
        return "-"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    return f"{v:.3g}"


def table(bench: Bench) -> tuple[str, dict[str, Any]]:
    vals = bench.values
    for system in ("ours", "monarch", "raw"):
        rt = vals[system].get("rt16_ms")
        if rt:
            vals[system]["rt16_mib_s"] = {
                r: None if v is None else 16.0 / (v / 1e3) for r, v in rt.items()
            }
    bound = bench.args.fault_timeout_s
    lines = [
        "| metric | unit | ours | torchmonarch | raw TCP | ours/monarch | ours/raw | target |",
        "|---|---|--:|--:|--:|--:|--:|---|",
    ]
    summary: dict[str, Any] = {}
    for key, label, unit, _better, target in ROWS:
        cells, meds = [], {}
        for system in ("ours", "monarch", "raw"):
            m, over = _median(list(vals[system].get(key, {}).values()))
            meds[system] = (m, over)
            cells.append(_fmt(m, over, bound, unit))
        scale = bound * (1e3 if unit == "ms" else 1.0)
        ours = vals["ours"].get(key, {})
        ratios = [_ratio(ours, vals[other].get(key, {}), scale) for other in ("monarch", "raw")]
        lines.append(f"| {label} | {unit} | " + " | ".join(cells + ratios) + f" | {target} |")
        summary[key] = {
            s: {"median": meds[s][0], "over_bound": meds[s][1], "rounds": vals[s].get(key, {})}
            for s in meds
        }
    return "\n".join(lines), summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds (default 2)")
    ap.add_argument(
        "--calls", type=int, default=300, help="timed calls per latency row (default 300)"
    )
    ap.add_argument("--fault-timeout-s", type=float, default=20.0,
                    help="how long a caller waits for the error of a broken host (default 20)")  # fmt: skip
    ap.add_argument("--venv", default=str(DEFAULT_VENV), help="torchmonarch's venv")
    ap.add_argument("--no-torchmonarch", action="store_true", help="ours and raw only")
    ap.add_argument("--no-fanout", action="store_true", help="skip the 64-proc broadcast")
    ap.add_argument(
        "--sessions",
        type=lambda v: set(v.split(",")),
        default={"main", "silent", "fanout"},
        help="comma-separated sessions to run: main,silent,fanout (default all)",
    )
    ap.add_argument("--markdown", help="also write the table (with its conditions) to this file")
    ap.add_argument("--client", help=argparse.SUPPRESS)
    ap.add_argument("--gateway", help=argparse.SUPPRESS)
    ap.add_argument("--agents", help=argparse.SUPPRESS)
    ap.add_argument("--echo-server", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.echo_server:
        echo_server(args.echo_server)
        return
    if args.client:
        client(args.client, args.gateway, args.agents.split(","), args.calls, args.fault_timeout_s)
        sys.stdout.flush()
        os._exit(
            0
        )  # a client whose host died may wait long in its shutdown: the orchestrator kills it
    if os.geteuid() != 0:
        sys.exit("multihost_bench needs root: it makes network namespaces")
    sys.path.insert(0, str(ROOT))
    bench = Bench(args)
    started = time.monotonic()
    bench.run()
    text, summary = table(bench)
    load = os.getloadavg()
    cond = (
        f"Rounds: {args.rounds} interleaved; {os.cpu_count()} CPUs; load average at the end "
        f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}; Python {platform.python_version()}; "
        f"wall {time.monotonic() - started:.0f} s. Values are medians over rounds of per-session "
        f"medians; ratios are medians of the per-round ratios (ours / other in the same round); "
        f"`> {args.fault_timeout_s:g} s`: no error within the bound."
    )
    print()
    print(cond)
    print(text)
    for note in bench.notes:
        print(f"note: {note}")
    if args.markdown:
        Path(args.markdown).write_text(cond + "\n\n" + text + "\n")
    print(
        "BENCH-RESULT "
        + json.dumps({"workload": "multihost_bench", "rows": summary, "notes": bench.notes})
    )


if __name__ == "__main__":
    main()
