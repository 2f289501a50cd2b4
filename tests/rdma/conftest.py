"""Fixtures for RDMA tests: owner processes that are always stopped, even when a test fails."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

OWNER = Path(__file__).with_name("rdma_owner_proc.py")


class Owner:
    """A running ``rdma_owner_proc.py``: registers memory, answers checks, can be stopped or killed."""

    def __init__(self, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(OWNER)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def ask(self, **cmd: object) -> dict:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"owner process exited (rc={self.proc.poll()})")
        return json.loads(line)

    def register(self, size: int, salt: int, readonly: bool = False):
        from monarch.rdma import RDMABuffer

        answer = self.ask(op="register", size=size, salt=salt, readonly=readonly)
        return answer["index"], RDMABuffer.from_bytes(bytes.fromhex(answer["desc"]))

    def check(self, index: int, size: int, salt: int) -> bool:
        return bool(self.ask(op="check", index=index, size=size, salt=salt)["ok"])

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGCONT)
                self.proc.kill()
            except ProcessLookupError:
                pass
        self.proc.wait(timeout=10)
        for f in (self.proc.stdin, self.proc.stdout):
            if f is not None:
                f.close()


@pytest.fixture(scope="module")
def _shared_owner() -> Iterator[list[Owner]]:
    holder: list[Owner] = []
    try:
        yield holder
    finally:
        for proc in holder:
            proc.stop()


@pytest.fixture
def owner(_shared_owner: list[Owner]) -> Owner:
    """An owner process shared by a module's tests (started again if a test ended it).

    Starting Python is slow in the QEMU guest; sharing keeps the verbs run short.
    """
    if not _shared_owner or _shared_owner[-1].proc.poll() is not None:
        _shared_owner.append(Owner())
    proc = _shared_owner[-1]
    os.kill(proc.pid, signal.SIGCONT)
    return proc


@pytest.fixture
def own_owner() -> Iterator[Owner]:
    """An owner process for one test (which may kill it)."""
    proc = Owner()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def rdma_backend(request: pytest.FixtureRequest) -> Iterator[str]:
    """Force the reader's backend to ``request.param`` for one test."""
    from monarch.rdma import configure

    before = configure().backend
    configure(backend=request.param)
    try:
        yield request.param
    finally:
        configure(backend=before)
