"""A spawn whose actor module imports slowly (torch under load: seconds) is decoded off the proc's
event loop: meanwhile the proc's other actors answer, and calls and stops for the new mesh wait for
it instead of failing. Real procs; the import is held open by the test, not timed."""

from __future__ import annotations

import os
import time

import pytest
from monarch.actor import Actor, endpoint, this_host

WAIT_S = 30.0


class Quick(Actor):
    @endpoint
    def ping(self) -> str:
        return os.environ.get("SLOW_IMPORT_DIR", "")


def _slow_class() -> type[Actor]:
    import sys

    return sys.modules["tests.runtime.slow_import_actor"].SlowToImport


def _wait_for(path: str, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not os.path.exists(path):
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.01)


@pytest.fixture
def slow_dir(tmp_path, monkeypatch):
    """The folder the slow module's import waits on, set for the procs spawned after. The client
    imports the module first (at once: the variable is not set yet). This test module does not
    import it, so a proc that imports this module (for ``Quick``) does not wait."""
    import importlib

    importlib.import_module("tests.runtime.slow_import_actor")
    monkeypatch.setenv("SLOW_IMPORT_DIR", str(tmp_path))
    yield str(tmp_path)
    (tmp_path / "release").touch()  # never leave a proc waiting in its import


def test_a_proc_keeps_answering_while_an_actor_module_imports(slow_dir) -> None:
    procs = this_host().spawn_procs(per_host={"gpus": 1})
    try:
        quick = procs.spawn("quick", Quick)
        assert quick.ping.call_one().get(WAIT_S) == slow_dir
        # the class goes by reference: the proc imports its module when it decodes the spawn
        slow = procs.spawn("slow", _slow_class())
        pending = slow.ping.call_one()  # parked in the proc until the import ends
        _wait_for(os.path.join(slow_dir, "started"))
        # the proc's loop is free: its other actor answers during the import
        assert quick.ping.call_one().get(WAIT_S) == slow_dir
        assert not os.path.exists(os.path.join(slow_dir, "release"))
        open(os.path.join(slow_dir, "release"), "w").close()
        assert pending.get(WAIT_S) == "imported"
        assert slow.ping.call_one().get(WAIT_S) == "imported"
    finally:
        procs.stop().get(WAIT_S)


def test_a_mesh_stopped_while_its_module_imports_is_stopped_once_spawned(slow_dir) -> None:
    procs = this_host().spawn_procs(per_host={"gpus": 1})
    try:
        slow = procs.spawn("slow", _slow_class())
        _wait_for(os.path.join(slow_dir, "started"))
        stopping = slow.stop()
        open(os.path.join(slow_dir, "release"), "w").close()
        stopping.get(WAIT_S)  # answered once the actors existed and were stopped
        quick = procs.spawn("quick", Quick)
        assert quick.ping.call_one().get(WAIT_S) == slow_dir  # the proc lives on
    finally:
        procs.stop().get(WAIT_S)
