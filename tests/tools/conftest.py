"""Fixtures of the tools' tests: a running 4-proc mesh with actors in this test process, whose
client runtime serves the admin endpoint that ``monarch status``/``exec``/``env``/``top`` and
the dashboard talk to."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pexpect
import pytest
from monarch.actor import Actor, endpoint, this_host

from tests.runtime.failure_log import failures  # noqa: F401  # the fixture, for every test here


def free_port() -> int:
    """A TCP port of ``localhost`` that was free a moment ago (the debug server's, in tests)."""
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def spawned() -> Iterator[list[pexpect.spawn]]:
    """Children a test starts with pexpect (append them): all killed and closed afterwards."""
    children: list[pexpect.spawn] = []
    try:
        yield children
    finally:
        for child in children:
            if child.isalive():
                child.terminate(force=True)
            child.close(force=True)


#: actors per proc in :func:`running_mesh`
ACTORS_PER_PROC = 2


class Worker(Actor):
    """A plain actor with a counter; ``ping`` answers its rank."""

    def __init__(self) -> None:
        self.calls = 0

    @endpoint
    def ping(self) -> int:
        from monarch.actor import context

        self.calls += 1
        return int(context().actor_instance.rank.rank)

    @endpoint
    def boom(self) -> None:
        raise ValueError("boom")


@dataclass
class RunningMesh:
    """What :func:`running_mesh` yields.

    Attributes:
        procs: the ProcMesh (extent ``{"gpus": 4}``).
        workers: a ``Worker`` mesh on it (one actor per proc), already answering.
        more: a second ``Worker`` mesh per proc, ``ACTORS_PER_PROC - 1`` of them.
        admin_file: the path of this client's ``admin.json``.
        admin: its contents (``url``, ``token``, ``pid``, ...).
        pids: the pids of its 4 procs (a status also lists failed procs of earlier tests).
    """

    procs: Any
    workers: Any
    more: list[Any]
    admin_file: str
    admin: dict[str, Any]
    pids: set[int]

    def env(self) -> dict[str, str]:
        """An environment for ``monarch`` subprocesses that points them at this client."""
        return {**os.environ, "MONARCH_ADMIN_FILE": self.admin_file}

    def monarch(
        self, *args: str, timeout_s: float = 120.0, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run the real ``monarch`` CLI (``monarch.cli.main``) against this client; ``env``:
        extra environment variables."""
        return subprocess.run(
            [sys.executable, "-c", "from monarch.cli import main; main()", *args],
            env={**self.env(), **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )


@pytest.fixture
def running_mesh() -> Iterator[RunningMesh]:
    """A running 4-proc mesh (``per_host={"gpus": 4}``) with ``Worker`` actors, in this process;
    always stopped afterwards."""
    from monarch._mesh import current

    procs = this_host().spawn_procs(per_host={"gpus": 4})
    try:
        workers = procs.spawn("workers", Worker)
        more = [procs.spawn(f"more{i}", Worker) for i in range(ACTORS_PER_PROC - 1)]
        assert workers.ping.call().get(60.0).values() == [0, 1, 2, 3]
        for m in more:
            m.ping.call().get(60.0)
        rt = current.installed()
        assert rt is not None and rt.admin is not None, (
            "the client runtime serves no admin endpoint (MONARCH_ADMIN=0?)"
        )
        path = os.path.join(rt.runtime_dir, "admin.json")
        with open(path) as f:
            admin = json.load(f)
        pids = {rt.procs.children[a].pid for a in set(procs._addrs)}
        yield RunningMesh(procs, workers, more, path, admin, pids)
    finally:
        procs.stop().get(30.0)
