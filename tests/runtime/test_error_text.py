"""Error texts read as Monarch's, which users' code and tests match on, with our details added.

Phrases checked (Monarch's): ``Actor call mesh.endpoint failed``, ``Traceback of where the remote
call failed``, ``Endpoint call mesh.endpoint() failed, ``, ``The actor <module.Class
mesh{'gpus': 0/1}> and all its descendants have failed:``, ``the process this actor was running on
failed: Killed(sig=9)``, ``MeshFailure(mesh_name=..., crashed_ranks=[0], event=Supervision event:
actor ... failed: ...)``. Ours kept: the exception line, the rank, host and pid.
"""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Iterator

import pytest
from monarch.actor import ActorError, Channel, ProcMesh, SupervisionError
from monarch.testing import proc_mesh

from tests.runtime.error_text_actors import Victim
from tests.runtime.failure_log import FailureLog

QUALIFIED = r"<tests\.runtime\.error_text_actors\.Victim victim\{'gpus': 0/1\}>"


@pytest.fixture
def faults(failures: FailureLog) -> FailureLog:
    return failures


@pytest.fixture
def procs() -> Iterator[ProcMesh]:
    with proc_mesh({"gpus": 1}) as p:
        yield p


def test_endpoint_error_reads_actor_call_mesh_endpoint_failed_with_remote_traceback(
    procs: ProcMesh,
) -> None:
    v = procs.spawn("victim", Victim)
    with pytest.raises(ActorError) as info:
        v.boom.call_one().get(timeout=15)
    text = str(info.value)
    assert re.match(r"Actor call victim\.boom failed", text), text
    assert "ValueError: bad input 42" in text and "victim[0]" in text
    assert "\n Traceback of where the remote call failed (most recent call last):\n" in text
    assert 'in boom\n    raise ValueError("bad input 42")' in text
    assert repr(info.value).startswith(
        "ActorError(ValueError('bad input 42'), 'Actor call victim.boom failed"
    )
    assert info.value.call == "victim.boom" and isinstance(info.value.exception, ValueError)


def test_endpoint_error_text_keeps_the_remote_exception_chain(procs: ProcMesh) -> None:
    v = procs.spawn("victim", Victim)
    with pytest.raises(
        ActorError, match=r"Actor call victim\.chained failed: RuntimeError: outer failure"
    ) as info:
        v.chained.call_one().get(timeout=15)
    text = str(info.value)
    assert "KeyError: 'inner cause'" in text
    assert "The above exception was the direct cause of the following exception" in text


def test_broadcast_failure_report_and_str_read_as_monarchs_mesh_failure(
    procs: ProcMesh, faults: FailureLog
) -> None:
    v = procs.spawn("victim", Victim)
    pid = v.pid.call_one().get(timeout=15)
    v.boom.broadcast()
    f = faults.wait_for("victim")
    report = f.report()
    assert re.match(
        r"The actor "
        + QUALIFIED
        + r" and all its descendants have failed:\n  ValueError: bad input 42\n",
        report,
    ), report
    assert f"pid {pid}" in report and "victim[0]" in report
    text = str(f)
    assert re.match(
        r"MeshFailure\(mesh_name=victim, crashed_ranks=\[0\], event=Supervision event: actor "
        + QUALIFIED
        + " failed:\n  ValueError: bad input 42",
        text,
    ), text
    assert repr(f) == text
    assert f.crashed_ranks == [0] == f.ranks


def test_call_whose_actor_fails_reads_endpoint_call_mesh_endpoint_failed(
    procs: ProcMesh, faults: FailureLog
) -> None:
    v = procs.spawn("victim", Victim)
    with pytest.raises(SupervisionError) as info:
        v.drop_port.call_one().get(timeout=15)
    text = str(info.value)
    assert text.startswith("Endpoint call victim.drop_port() failed, "), text
    assert "LookupError: no answer for you" in text
    report = faults.wait_for("victim").report()
    assert re.match(
        r"The actor " + QUALIFIED + " and all its descendants have failed:\n  LookupError", report
    ), report


def test_sigkilled_proc_reads_process_this_actor_was_running_on_failed_killed_sig_9(
    procs: ProcMesh, faults: FailureLog
) -> None:
    v = procs.spawn("victim", Victim)
    started_port, started = Channel[int].open()
    fut = v.hold.call_one(started_port, 60)
    pid = started.recv().get(timeout=15)
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(SupervisionError) as info:
        fut.get(timeout=15)
    text = str(info.value)
    assert re.search(
        r"The actor .* and all its descendants have failed:\n  the process this actor was running on failed: Killed\(sig=9\)",
        text,
    ), text
    assert "killed by signal 9 (SIGKILL)" in text and f"pid {pid}" in text
    f = faults.wait_for("victim")
    assert f.crashed_ranks == [0] and "Killed(sig=9)" in f.report()
    assert "and all its descendants have failed:" in f.report()
    assert str(f).startswith(
        "MeshFailure(mesh_name=victim, crashed_ranks=[0], event=Supervision event: actor "
    )


def test_proc_end_is_described_in_monarchs_words() -> None:
    from monarch._mesh.procs import describe_status

    assert describe_status(signal.SIGKILL) == "Killed(sig=9): killed by signal 9 (SIGKILL)"
    assert describe_status(1 << 8) == "exited with non-zero code 1: exited with status 1"
    assert describe_status(0) == "exited with status 0"


def test_spawning_on_a_stopped_proc_mesh_raises_a_runtime_error_naming_it() -> None:
    from monarch.actor import SupervisionError, this_host

    from tests.runtime.feature_actors import Nester

    procs = this_host().spawn_procs({"gpus": 1})
    procs.stop().get(30)
    with pytest.raises(RuntimeError, match="`ProcMesh` has already been stopped") as info:
        procs.spawn("late", Nester)
    assert isinstance(info.value, SupervisionError)
