"""Machines in a box: "hosts" made of Linux network namespaces on one bridge.

Each host is a network namespace with its own IP on a private /24, joined to a bridge in the root
namespace by a veth pair, plus its own hostname and ``/etc/hosts`` (a UTS and a mount namespace per
process started in it). Processes enter a host with ``nsenter --net=/run/netns/NAME`` rather than
``ip netns exec``, which remounts /sys and breaks slurmd (DESIGN.md, "Many hosts").

Every name carries a per-run prefix ``mh-<owner pid, base 36>-<sequence>`` so parallel runs do not
collide and the leftovers of a crashed run (its owner pid is dead) can be found and removed.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import ipaddress
import itertools
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from tests.multihost.procs import (
    KILL_TIMEOUT_S,
    kill_until_gone,
    pid_alive,
    pids_in_netns,
    pids_with_cmdline,
)

NAME_PREFIX = "mh-"
#: Runs take the first free /24 of this /16 (10.213.0.0/24 unless a parallel run holds it).
SUPERNET = ipaddress.IPv4Network("10.213.0.0/16")
#: Per-run files (hosts file, daemon configs, logs) live under here, in ``<run prefix>/``.
STATE_ROOT = Path(tempfile.gettempdir()) / "monarch-multihost"
REQUIRED_TOOLS = ("ip", "nsenter", "unshare", "mount", "hostname")
IP_TIMEOUT_S = 10.0

# Inside a host: $0 = hostname, $1 = hosts file, "$@" = argv after shift. The mount and UTS
# namespaces are private to the process (unshare's default propagation is private), so neither
# the bind mount nor the hostname leaks to the machine.
_ENTER_SCRIPT = 'h=$0; f=$1; shift; mount --bind "$f" /etc/hosts && hostname "$h" && exec "$@"'
_RUN_RE = re.compile(r"^mh-([0-9a-z]+)-([0-9a-z]+)")
_seq = itertools.count()
#: Every run prefix this process made (the session check looks for their leftovers).
created_prefixes: list[str] = []
_live: set[HostNet] = set()
_live_lock = threading.Lock()


class NetnsUnavailable(RuntimeError):
    """Network namespaces cannot be made here (not root, or a tool is missing)."""


def unavailable_reason() -> str | None:
    """Say why network-namespace hosts cannot be made here.

    Returns:
        A sentence for ``pytest.skip``, or None when they can be made.
    """
    if os.geteuid() != 0:
        return "network-namespace hosts need root (ip netns, nsenter, unshare)"
    missing = [tool for tool in REQUIRED_TOOLS if shutil.which(tool) is None]
    if missing:
        return f"network-namespace hosts need {', '.join(missing)} on PATH (util-linux, iproute2)"
    return None


def _base36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = digits[r] + out
        if n == 0:
            return out


def new_run_prefix() -> str:
    """A name prefix unique to this process and call: ``mh-<pid base 36>-<sequence base 36>``.

    Interface names are at most 15 bytes: with pid_max 4194304 the prefix is at most 11 up to the
    1296th call, leaving room for the ``-b`` (bridge) and ``-<index>`` (veth) suffixes.
    """
    prefix = f"{NAME_PREFIX}{_base36(os.getpid())}-{_base36(next(_seq))}"
    created_prefixes.append(prefix)
    return prefix


def _owner_pid(name: str) -> int | None:
    match = _RUN_RE.match(name)
    return int(match.group(1), 36) if match else None


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        ["ip", *args], capture_output=True, text=True, timeout=IP_TIMEOUT_S, check=False
    )
    if check and proc.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def _netns_names() -> list[str]:
    try:
        return sorted(os.listdir("/run/netns"))
    except FileNotFoundError:
        return []


def _link_names() -> list[str]:
    return sorted(os.listdir("/sys/class/net"))


def _netns_inode(name: str) -> int | None:
    try:
        return os.stat(f"/run/netns/{name}").st_ino
    except OSError:
        return None


def remove_leftovers(*, include_live_owners: bool = False) -> list[str]:
    """Remove namespaces, links, processes and state dirs of runs whose owner process is dead.

    Args:
        include_live_owners: also remove this process's own runs (after a failed close); runs
            of other live processes (parallel runs) are never touched.

    Returns:
        What was removed, for a log line.
    """

    def stale(name: str) -> bool:
        owner = _owner_pid(name)
        if owner is None:
            return False
        if owner == os.getpid():
            return include_live_owners
        return not pid_alive(owner)

    removed: list[str] = []
    if STATE_ROOT.is_dir():
        for run_dir in sorted(STATE_ROOT.iterdir()):
            if stale(run_dir.name):
                marker = f"{run_dir}/".encode()
                kill_until_gone(lambda m=marker: pids_with_cmdline(m))
                removed.append(str(run_dir))
    for ns in _netns_names():
        if stale(ns):
            inode = _netns_inode(ns)
            if inode is not None:
                kill_until_gone(lambda i=inode: pids_in_netns(i))
            _ip("netns", "delete", ns, check=False)
            removed.append(f"netns {ns}")
    for link in _link_names():
        if stale(link):
            _ip("link", "delete", link, check=False)
            removed.append(f"link {link}")
    if STATE_ROOT.is_dir():
        for run_dir in sorted(STATE_ROOT.iterdir()):
            if stale(run_dir.name):
                shutil.rmtree(run_dir, ignore_errors=True)
    return removed


class Host:
    """One namespace host: its own IP, hostname and ``/etc/hosts``; tracks what it starts.

    Made by :class:`HostNet`; never construct it directly.
    """

    def __init__(self, net: HostNet, index: int, ip: str) -> None:
        self.net = net
        self.index = index
        self.name = f"h{index}"  # the hostname inside the host
        self.ip = ip
        self.netns = f"{net.prefix}-h{index}"
        self.veth = f"{net.prefix}-{index}"  # root-namespace end; the host's end is eth0
        self._procs: list[subprocess.Popen[Any]] = []
        self._link_up = True

    def __repr__(self) -> str:
        running = sum(1 for p in self._procs if p.poll() is None)
        link = "up" if self._link_up else "cut"
        return f"<Host {self.name} ip={self.ip} netns={self.netns} link={link} running={running}>"

    @property
    def netns_path(self) -> str:
        return f"/run/netns/{self.netns}"

    def wrap(self, argv: Sequence[str]) -> list[str]:
        """The command line that runs ``argv`` inside this host, with its hostname and hosts file.

        Args:
            argv: program and arguments; the program is looked up on PATH inside the host.

        Returns:
            ``nsenter --net=... unshare --uts --mount -- sh -c ... argv``; the final ``exec``
            keeps the pid, so the pid of a process started with it is the pid of ``argv``.
        """
        return [
            "nsenter",
            f"--net={self.netns_path}",
            "unshare",
            "--uts",
            "--mount",
            "--",
            "sh",
            "-c",
            _ENTER_SCRIPT,
            self.name,
            str(self.net.hosts_file),
            *argv,
        ]

    def agent_argv(self, *extra: str, listen: str | None = None) -> list[str]:
        """``monarch host serve --listen LISTEN`` run by this interpreter, with ``extra`` options;
        ``listen`` defaults to an ephemeral port on this host's IP (``tcp://IP:0``)."""
        where = listen if listen is not None else f"tcp://{self.ip}:0"
        return [sys.executable, "-m", "monarch.cli", "host", "serve", "--listen", where, *extra]

    def popen(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` inside this host; :meth:`kill_all` and teardown will SIGKILL it.

        Args:
            argv: program and arguments.
            **kwargs: passed to ``subprocess.Popen`` (``stdout``, ``env``, ``text``, ...);
                ``start_new_session`` defaults to True so the process and its children form a
                group that can be killed together.

        Returns:
            The Popen; its pid is the pid of ``argv`` itself once the wrapper has exec'd.
        """
        kwargs.setdefault("start_new_session", True)
        proc = subprocess.Popen(self.wrap(argv), **kwargs)
        self._procs.append(proc)
        return proc

    def run(
        self,
        argv: Sequence[str],
        *,
        timeout_s: float = 30.0,
        check: bool = False,
        input: str | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside this host to completion, capturing text stdout and stderr.

        Args:
            argv: program and arguments.
            timeout_s: the process group is SIGKILLed after this many seconds.
            check: raise ``CalledProcessError`` on a non-zero exit status.
            input: text written to its stdin; None for no stdin (/dev/null).
            env: the environment; None inherits this process's.

        Returns:
            The completed process (``returncode``, ``stdout``, ``stderr``).

        Raises:
            subprocess.TimeoutExpired: it ran past ``timeout_s`` (it has been killed).
            subprocess.CalledProcessError: ``check`` and a non-zero exit status.
        """
        proc = self.popen(
            argv,
            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        try:
            out, err = proc.communicate(input, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate(timeout=KILL_TIMEOUT_S)
            raise
        result = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
        if check:
            result.check_returncode()
        return result

    def cut_link(self) -> None:
        """Partition this host: take its veth down, so packets to and from it are dropped.

        Established connections are not reset (as with a pulled cable); they stall.
        """
        _ip("link", "set", self.veth, "down")
        self._link_up = False

    def restore_link(self) -> None:
        """Heal a :meth:`cut_link`: bring the veth back up (the bridge forwards at once)."""
        _ip("link", "set", self.veth, "up")
        self._link_up = True

    def freeze(self) -> set[int]:
        """Hang this host: SIGSTOP every process in it (its kernel still ACKs TCP: only silence tells).

        Returns:
            The pids stopped (for :meth:`thaw`).
        """
        stopped = self.pids()
        for pid in stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
        return stopped

    def thaw(self) -> None:
        """SIGCONT every process in this host (after :meth:`freeze`)."""
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    def pids(self) -> set[int]:
        """Every live process inside this host's network namespace (started by us or not)."""
        inode = _netns_inode(self.netns)
        return pids_in_netns(inode) if inode is not None else set()

    def kill_all(self, timeout_s: float = KILL_TIMEOUT_S) -> None:
        """SIGKILL every process in this host (a host crash) and reap the ones we started.

        Kills the process group of each process started with :meth:`popen`, then every process
        left in the namespace (daemons' forks such as slurmstepd or sshd sessions), until none.

        Args:
            timeout_s: bound on the whole kill.

        Raises:
            RuntimeError: processes were still alive after ``timeout_s``.
        """
        for proc in self._procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
        left = kill_until_gone(self.pids, timeout_s)
        for proc in self._procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=timeout_s)
        self._procs = [p for p in self._procs if p.returncode is None]
        if left or self._procs:
            raise RuntimeError(f"{self.name}: still alive after SIGKILL: {sorted(left)}")


class HostNet:
    """N namespace hosts on one bridge: ``hosts[i].ip`` is ``<subnet>.(10+i)``, the bridge ``.1``.

    Use as a context manager (or call :meth:`close`); an atexit hook closes any left open.

    Args:
        count: number of hosts (1-200).
        prefix: name prefix of every namespace, link and state dir; a fresh one by default.

    Raises:
        NetnsUnavailable: not root, or a tool is missing.
        RuntimeError: an ``ip`` command failed, or no /24 of ``SUPERNET`` is free.
    """

    def __init__(self, count: int, *, prefix: str | None = None) -> None:
        if not 1 <= count <= 200:
            raise ValueError(f"count must be in 1..200, got {count}")
        reason = unavailable_reason()
        if reason:
            raise NetnsUnavailable(reason)
        self.prefix = prefix or new_run_prefix()
        self.bridge = f"{self.prefix}-b"
        self.state_dir = STATE_ROOT / self.prefix
        self.hosts_file = self.state_dir / "hosts"
        self.hosts: list[Host] = []
        self.netns_inodes: list[int] = []  # to find processes even after the names are gone
        self.subnet: ipaddress.IPv4Network | None = None
        self.gateway_ip = ""
        self.setup_s = 0.0
        self._closed = False
        started = time.monotonic()
        with _live_lock:
            _live.add(self)
        try:
            self._create(count)
        except BaseException:
            self.close()
            raise
        self.setup_s = time.monotonic() - started

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<HostNet {self.prefix} subnet={self.subnet} hosts={len(self.hosts)} {state}>"

    def __enter__(self) -> HostNet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __len__(self) -> int:
        return len(self.hosts)

    def __getitem__(self, index: int) -> Host:
        return self.hosts[index]

    def __iter__(self) -> Iterator[Host]:
        return iter(self.hosts)

    def _create(self, count: int) -> None:
        STATE_ROOT.mkdir(mode=0o755, exist_ok=True)
        self.state_dir.mkdir(mode=0o755)
        # Picking a free /24 and claiming it (the bridge address) is one step under a lock, so
        # parallel runs never share a subnet.
        with open(STATE_ROOT / ".subnet.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self.subnet = self._free_subnet()
            base = self.subnet.network_address
            self.gateway_ip = str(base + 1)
            _ip("link", "add", self.bridge, "type", "bridge", "forward_delay", "0")
            _ip("addr", "add", f"{self.gateway_ip}/24", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
        ips = [str(base + 10 + i) for i in range(count)]
        lines = ["127.0.0.1 localhost", f"{self.gateway_ip} gateway"]
        lines += [f"{ip} h{i}" for i, ip in enumerate(ips)]
        self.hosts_file.write_text("\n".join(lines) + "\n")
        for i, ip in enumerate(ips):
            host = Host(self, i, ip)
            self.hosts.append(host)
            _ip("netns", "add", host.netns)
            inode = _netns_inode(host.netns)
            if inode is not None:
                self.netns_inodes.append(inode)
            peer = ("peer", "name", "eth0", "netns", host.netns)
            _ip("link", "add", host.veth, "type", "veth", *peer)
            _ip("-n", host.netns, "addr", "add", f"{ip}/24", "dev", "eth0")
            _ip("-n", host.netns, "link", "set", "eth0", "up")
            _ip("-n", host.netns, "link", "set", "lo", "up")
            _ip("link", "set", host.veth, "master", self.bridge, "up")

    def _free_subnet(self) -> ipaddress.IPv4Network:
        used = []
        for line in _ip("-o", "-4", "addr", "show").stdout.splitlines():
            fields = line.split()
            if "inet" in fields:
                used.append(ipaddress.ip_interface(fields[fields.index("inet") + 1]).network)
        for candidate in SUPERNET.subnets(new_prefix=24):
            if not any(candidate.overlaps(net) for net in used):
                return candidate
        raise RuntimeError(f"no free /24 left in {SUPERNET}")

    def wait_tcp(self, ip: str, port: int, timeout_s: float = 10.0) -> None:
        """Wait until a TCP connect from the root namespace to ``ip:port`` succeeds.

        Raises:
            TimeoutError: not accepting after ``timeout_s``.
        """

        deadline = time.monotonic() + timeout_s
        while True:
            try:
                with socket.create_connection((ip, port), timeout=1.0):
                    return
            except OSError as exc:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{ip}:{port} not accepting after {timeout_s} s") from exc
                time.sleep(0.02)  # poll interval of a bounded wait on a real condition

    def leftovers(self) -> list[str]:
        """What of this net still exists: namespaces, links, its state dir, processes (checks)."""
        found = leftovers_of(self.prefix)
        for inode in self.netns_inodes:
            found += [
                f"pid {pid} in netns {inode} ({_cmdline(pid)})"
                for pid in sorted(pids_in_netns(inode))
            ]
        return found

    def close(self) -> None:
        """Kill every process in every host, delete the namespaces, veths, bridge and state dir.

        Idempotent; safe after a partial setup.
        """
        if self._closed:
            return
        self._closed = True
        errors = []
        for host in self.hosts:
            try:
                host.kill_all()
            except Exception as exc:
                errors.append(exc)
        marker = f"{self.state_dir}/".encode()
        kill_until_gone(lambda: pids_with_cmdline(marker))
        for host in self.hosts:
            _ip("link", "delete", host.veth, check=False)
        for ns in _netns_names():
            if ns.startswith(f"{self.prefix}-"):
                _ip("netns", "delete", ns, check=False)
        if self.bridge in _link_names():
            _ip("link", "delete", self.bridge, check=False)
        for inode in self.netns_inodes:
            kill_until_gone(lambda i=inode: pids_in_netns(i))
        shutil.rmtree(self.state_dir, ignore_errors=True)
        with _live_lock:
            _live.discard(self)
        if errors:
            raise errors[0]


def _cmdline(pid: int) -> str:
    """What the process runs, for a leftover report (its first 200 characters)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()[:200]
    except OSError:
        return "gone"


def leftovers_of(prefix: str) -> list[str]:
    """Namespaces, links, state dirs and processes of a run that still exist (for checks)."""
    found = [f"netns {ns}" for ns in _netns_names() if ns.startswith(f"{prefix}-")]
    found += [f"link {link}" for link in _link_names() if link.startswith(f"{prefix}-")]
    run_dir = STATE_ROOT / prefix
    if run_dir.exists():
        found.append(str(run_dir))
    found += [f"pid {pid}" for pid in sorted(pids_with_cmdline(f"{run_dir}/".encode()))]
    return found


@atexit.register
def _close_live_nets() -> None:
    with _live_lock:
        nets = list(_live)
    for net in nets:
        with contextlib.suppress(Exception):
            net.close()
