"""An ``sshd`` inside one namespace host, with generated keys: ``ssh root@<host ip>`` works.

The host key, the client key and ``authorized_keys`` are generated into the run's state dir; the
server listens only on the host's IP. Nothing is installed at test time: CI (.ci/run) installs
Debian's ``openssh-server``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tests.multihost.netns import Host

READY_TIMEOUT_S = 20.0
PRIVSEP_DIR = Path("/run/sshd")  # compiled into Debian's sshd; its service unit makes it


def unavailable_reason() -> str | None:
    """Say why an sshd cannot be started here.

    Returns:
        A sentence for ``pytest.skip``, or None when it can.
    """
    missing = [tool for tool in ("sshd", "ssh", "ssh-keygen") if shutil.which(tool) is None]
    if missing:
        return (
            f"the ssh fixture needs {', '.join(missing)} (Debian openssh-server and "
            "openssh-client; .ci/run installs them)"
        )
    return None


def _keygen(path: Path) -> None:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", str(path)],
        check=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )


class SshServer:
    """``sshd -D`` in ``host`` on port 22 of its IP, accepting ``client_key`` for root.

    Use as a context manager (or call :meth:`close`).

    Args:
        host: the namespace host to run it in.
        ready_timeout_s: bound on waiting until it accepts TCP connections.

    Raises:
        RuntimeError: sshd exited or did not listen within ``ready_timeout_s`` (with its log).
    """

    def __init__(self, host: Host, *, ready_timeout_s: float = READY_TIMEOUT_S) -> None:
        self.host = host
        self.ip = host.ip
        self.port = 22
        self.dir = host.net.state_dir / f"sshd-{host.name}"
        self.client_key = self.dir / "client_ed25519"
        self.log = self.dir / "sshd.log"
        self.setup_s = 0.0
        self._proc: subprocess.Popen[Any] | None = None
        self._closed = False
        started = time.monotonic()
        try:
            self._start(ready_timeout_s)
        except BaseException:
            self.close()
            raise
        self.setup_s = time.monotonic() - started

    def __repr__(self) -> str:
        alive = self._proc is not None and self._proc.poll() is None
        return f"<SshServer {self.host.name} {self.ip}:{self.port} alive={alive}>"

    def __enter__(self) -> SshServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _start(self, ready_timeout_s: float) -> None:
        self.dir.mkdir(mode=0o700)
        host_key = self.dir / "host_ed25519"
        _keygen(host_key)
        _keygen(self.client_key)
        authorized = self.dir / "authorized_keys"
        shutil.copyfile(self.client_key.with_suffix(".pub"), authorized)
        authorized.chmod(0o600)
        config = self.dir / "sshd_config"
        config.write_text(
            "\n".join(
                [
                    f"ListenAddress {self.ip}:{self.port}",
                    f"HostKey {host_key}",
                    f"AuthorizedKeysFile {authorized}",
                    f"PidFile {self.dir / 'sshd.pid'}",
                    "PermitRootLogin prohibit-password",
                    "PubkeyAuthentication yes",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "UsePAM no",
                    "StrictModes no",  # the keys live under /tmp, which is group/world writable
                    "UseDNS no",
                    "PrintMotd no",
                    "PrintLastLog no",
                    "AcceptEnv LANG LC_*",
                ]
            )
            + "\n"
        )
        PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
        sshd = shutil.which("sshd")
        assert sshd is not None  # checked by unavailable_reason(); sshd re-execs by absolute path
        with open(self.log, "wb") as log:
            self._proc = self.host.popen(
                [sshd, "-D", "-e", "-f", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + ready_timeout_s
        while True:
            if self._proc.poll() is not None:
                raise RuntimeError(f"sshd exited with {self._proc.returncode}:\n{self._log()}")
            try:
                self.host.net.wait_tcp(self.ip, self.port, timeout_s=0.0)
                return
            except TimeoutError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"sshd not listening after {ready_timeout_s} s:\n{self._log()}")
            time.sleep(0.02)  # poll interval of a bounded wait on a real condition

    def _log(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return "(no log)"

    def ssh_argv(self, *command: str, connect_timeout_s: int = 10) -> list[str]:
        """The ``ssh`` command line that runs ``command`` as root on this host.

        Args:
            *command: the remote command (joined by the remote shell, as ssh does).
            connect_timeout_s: ssh's ``ConnectTimeout``.

        Returns:
            ``ssh -i KEY -o StrictHostKeyChecking=no ... root@IP command...``.
        """
        return [
            "ssh",
            "-i",
            str(self.client_key),
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            f"ConnectTimeout={connect_timeout_s}",
            "-o",
            "LogLevel=ERROR",
            "-p",
            str(self.port),
            f"root@{self.ip}",
            *command,
        ]

    def run(
        self, command: Sequence[str], *, timeout_s: float = 30.0
    ) -> subprocess.CompletedProcess[str]:
        """Run ``command`` on this host over ssh from the root namespace.

        Args:
            command: the remote command.
            timeout_s: the ssh client is killed after this many seconds.

        Returns:
            The completed ssh process, text stdout and stderr.

        Raises:
            subprocess.TimeoutExpired: it ran past ``timeout_s``.
        """
        return subprocess.run(
            self.ssh_argv(*command),
            capture_output=True,
            text=True,
            timeout=timeout_s,
            stdin=subprocess.DEVNULL,
        )

    def close(self) -> None:
        """SIGKILL sshd (its process group) and reap it. Idempotent.

        Sessions (which ``setsid``) die with the host: :meth:`Host.kill_all` or the net's close.
        """
        if self._closed:
            return
        self._closed = True
        if self._proc is not None:
            if self._proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait(timeout=10)
