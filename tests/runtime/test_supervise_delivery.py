"""Supervision events reach ``__supervise__`` without waiting for the running handler, and an
owner that becomes unhealthy fails its in-flight calls at once (Monarch's delivery)."""

from __future__ import annotations

import pytest
from monarch.actor import SupervisionError
from monarch.testing import proc_mesh

from tests.runtime.feature_actors import Owner

T = 60.0


def test_supervise_runs_while_an_async_endpoint_of_the_owner_is_suspended() -> None:
    with proc_mesh({"gpus": 1}) as procs:
        owner = procs.spawn("owner", Owner, True)
        assert owner.crash_child_and_wait.call_one().get(T) == ["crasher"]


def test_an_owner_that_does_not_handle_a_failure_fails_its_in_flight_call() -> None:
    with proc_mesh({"gpus": 1}) as procs:
        owner = procs.spawn("owner", Owner, False)
        # the handler never returns on its own: only the owner's failure can end this call
        with pytest.raises(SupervisionError):
            owner.crash_child_and_hang.call_one().get(T)
        with pytest.raises(SupervisionError):
            owner.crash_child_and_wait.call_one().get(T)


def test_stopping_a_proc_runs_its_actors_finalizers_and_atexit_handlers(tmp_path: object) -> None:
    import os

    from tests.runtime.feature_actors import Finalized

    path = os.path.join(str(tmp_path), "notes")
    with proc_mesh({"gpus": 1}) as procs:
        assert procs.spawn("fin", Finalized, path).ready.call_one().get(T)
    with open(path) as f:
        assert sorted(f.read().split()) == ["atexit", "del"]


def test_stopping_a_proc_finalizes_globals_of_the_modules_its_actors_imported(tmp_path: object) -> None:
    import os

    from tests.runtime.feature_actors import StashesAGlobal

    path = os.path.join(str(tmp_path), "marker")
    with proc_mesh({"gpus": 1}) as procs:
        assert procs.spawn("stash", StashesAGlobal, path).ready.call_one().get(T)
    with open(path) as f:
        assert f.read() == "finalized"


def test_an_async_endpoint_can_await_the_futures_of_a_stream() -> None:
    from tests.runtime.feature_actors import Fetcher, Ranked

    with proc_mesh({"gpus": 2}) as procs:
        ranked = procs.spawn("ranked", Ranked)
        fetcher = procs.spawn("fetcher", Fetcher)
        assert fetcher.slice(gpus=0).fetch.call_one(ranked).get(T) == [0, 1]


_FAULT_EXIT_SCRIPT = """
import atexit, sys, threading
from monarch.actor import Actor, endpoint, this_host

atexit.register(lambda: open(sys.argv[1], "w").write("ran"))


class Fails(Actor):
    @endpoint
    def boom(self) -> None:
        raise RuntimeError("nobody handles this")


procs = this_host().spawn_procs({"gpus": 1})
procs.spawn("fails", Fails).boom.broadcast()
threading.Event().wait(60)  # the default fault hook ends this process first
"""


def test_the_default_fault_hook_runs_the_programs_atexit_handlers_and_exits_1(tmp_path: object) -> None:
    import os
    import subprocess
    import sys

    script = os.path.join(str(tmp_path), "prog.py")
    marker = os.path.join(str(tmp_path), "marker")
    with open(script, "w") as f:
        f.write(_FAULT_EXIT_SCRIPT)
    done = subprocess.run([sys.executable, script, marker], capture_output=True, text=True, timeout=90)
    assert done.returncode == 1, done.stderr[-2000:]
    with open(marker) as f:
        assert f.read() == "ran"
