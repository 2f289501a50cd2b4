"""Monarch's supervision semantics that its own tests (test_actor_error.py) rely on, in real procs:
which failures end an actor and which its proc, which actor an error names, what the owner knows
by the time its call fails, and what becomes of a mesh whose owner's proc died."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from monarch.actor import SupervisionError
from monarch.testing import proc_mesh

from tests.runtime.failure_log import FailureLog
from tests.runtime.semantics_actors import Fragile, Parent

T = 30.0




def test_supervision_error_is_a_runtime_error() -> None:
    # Monarch's SupervisionError derives from RuntimeError; code written against it catches that
    assert issubclass(SupervisionError, RuntimeError)
    try:
        raise SupervisionError.actor_failed("w[0]", "ValueError: x")
    except RuntimeError as exc:
        assert "and all its descendants have failed" in str(exc)


def test_a_base_exception_that_is_no_exit_request_fails_its_actor_and_not_its_proc(failures: FailureLog) -> None:
    with proc_mesh({"gpus": 2}) as procs:
        bystanders = procs.spawn("bystanders", Fragile)
        fragile = procs.spawn("fragile", Fragile)
        with pytest.raises(SupervisionError, match=r"(?s)The actor <.*Fragile fragile\{'gpus': 1/2\}>.*Simulated: simulated failure"):
            fragile.slice(gpus=1).raise_base.call_one().get(T)
        assert failures.wait_for("fragile").ranks == [1]
        # the proc lives on: its other actors answer, and so does the other rank
        assert sorted(bystanders.ping.call().get(T).values()) == [0, 1]
        assert fragile.slice(gpus=0).ping.call_one().get(T) == 0
        with pytest.raises(SupervisionError, match="Simulated"):
            fragile.slice(gpus=1).ping.call_one().get(T)


def test_a_call_whose_proc_dies_names_the_actor_it_was_sent_to(failures: FailureLog) -> None:
    with proc_mesh({"gpus": 2}) as procs:
        doomed = procs.spawn("doomed", Fragile)
        with pytest.raises(
            SupervisionError,
            match=r"Endpoint call doomed\.die\(\) failed, The actor <tests\.runtime\.semantics_actors\.Fragile "
            r"doomed\{'gpus': 1/2\}> and all its descendants have failed",
        ):
            doomed.slice(gpus=1).die.call_one().get(T)
        failures.wait_for("doomed")


def test_an_owner_has_recorded_its_actors_failure_when_the_failed_call_is_answered(failures: FailureLog) -> None:
    with proc_mesh({"gpus": 1}) as procs:
        fragile = procs.spawn("fragile", Fragile)
        assert fragile.ping.call_one().get(T) == 0
        answered = threading.Event()
        next_call: list[Any] = []

        def on_answer(_: Any) -> None:
            # runs on the client's loop as the refusal arrives: the failure report must be in by now,
            # so the next call is refused here, before anything is sent
            try:
                next_call.append(fragile.ping.call_one())
            except SupervisionError as exc:
                next_call.append(exc)
            answered.set()

        call = fragile.bad_port.call_one()
        call.add_done_callback(on_answer)
        with pytest.raises(SupervisionError, match="KeyError"):
            call.get(T)
        assert answered.wait(T)
        assert isinstance(next_call[0], SupervisionError), f"the next call was sent: {next_call[0]!r}"
        assert "KeyError" in str(next_call[0])


def test_a_call_to_an_owner_failed_by_its_child_names_the_child_that_failed_first(failures: FailureLog) -> None:
    with proc_mesh({"gpus": 1}) as parents, proc_mesh({"gpus": 1}) as children:
        parent = parents.spawn("parent", Parent, children, False)
        with pytest.raises(
            SupervisionError,
            match=r"The actor <tests\.runtime\.semantics_actors\.Parent parent\{'gpus': 0/1\}>\."
            r"<tests\.runtime\.semantics_actors\.Fragile child\{'gpus': 0/1\}> and all its descendants have failed",
        ):
            parent.break_child_and_wait.call_one().get(T)
        failures.wait_for("parent")


def test_a_mesh_whose_owner_proc_died_refuses_calls_naming_the_lost_controller(failures: FailureLog) -> None:
    with proc_mesh({"gpus": 1}) as parents, proc_mesh({"gpus": 1}) as children:
        parent = parents.spawn("parent", Parent, children)
        orphans = parent.child_mesh.call_one().get(T)
        assert orphans.ping.call_one().get(T) == 0
        with pytest.raises(SupervisionError):
            parent.die.call_one().get(T)
        with pytest.raises(
            SupervisionError,
            match=r"timed out reaching controller \S+ for mesh child: the controller's proc is dead",
        ):
            orphans.ping.call_one().get(T)
        failures.wait_for("parent")


def test_a_proc_ended_by_sys_exit_delivers_its_failure_report_to_an_owner_on_another_proc(failures: FailureLog) -> None:
    with proc_mesh({"gpus": 1}) as parents, proc_mesh({"gpus": 1}) as children:
        parent = parents.spawn("parent", Parent, children)
        # the report names the cause; were it cut off by the proc's exit, the owner would
        # only see its link end ("the process this actor was running on failed: connection lost")
        assert parent.end_child_proc_and_wait.call_one().get(T) == ["SystemExit: 3 (the proc exited)"]
