"""Supervisor: failures delivered to the owner's ``__supervise__``, escalation, the root hook.

An owner actor on proc 0 spawns a child mesh on proc 1 (as ``this_proc().spawn`` inside an
actor would); the client owns the owner's mesh.
"""

from __future__ import annotations

import threading

import pytest
from monarch._core.failure import MeshFailure
from monarch._mesh.supervision import fault_hooks
from monarch.actor import Actor, endpoint
from monarch.testing import memory_runtimes

TIMEOUT_S = 5.0


class Child(Actor):
    @endpoint
    def fail(self) -> None:
        raise RuntimeError("child broke")

    @endpoint
    def ping(self) -> str:
        return "pong"


class Owner(Actor):
    """Answers ``__supervise__`` with ``verdict`` (True handled, False escalate, "raise")."""

    def __init__(self, verdict: object) -> None:
        self.verdict = verdict
        self.failures: list[MeshFailure] = []
        self.seen = threading.Event()

    def __supervise__(self, failure: MeshFailure) -> bool | None:
        self.failures.append(failure)
        self.seen.set()
        if self.verdict == "raise":
            raise ValueError("supervisor gave up")
        return self.verdict  # type: ignore[return-value]

    @endpoint
    def supervised(self) -> list[str]:
        return [f.cause for f in self.failures]


class Hook:
    def __init__(self) -> None:
        self.seen: list[MeshFailure] = []
        self.event = threading.Event()

    def __call__(self, failure: MeshFailure) -> None:
        self.seen.append(failure)
        self.event.set()


@pytest.fixture
def unhandled(monkeypatch):
    hook = Hook()
    monkeypatch.setattr(fault_hooks, "unhandled", hook)
    return hook


@pytest.fixture
def rts():
    with memory_runtimes(2) as r:
        yield r


def tree(rts, verdict: object):
    owner_ref = rts.spawn("owner", Owner, verdict, on=[rts.procs[0]])
    owner = rts.actor(owner_ref)
    child_ref = rts.spawn("child", Child, on=[rts.procs[1]], by=rts.procs[0], owner=owner)
    return owner_ref, owner, child_ref


def test_a_child_failure_reaches_the_owners_supervise_and_true_keeps_the_owner_running(rts, unhandled):
    owner_ref, owner, child_ref = tree(rts, True)
    rts.broadcast(child_ref, "fail", by=rts.procs[0])
    assert owner.obj.seen.wait(TIMEOUT_S)
    failure = owner.obj.failures[0]
    assert failure.mesh_name == "child" and failure.ranks == [0] and "RuntimeError: child broke" in failure.cause
    assert rts.call(owner_ref, "supervised").get(TIMEOUT_S) == [failure.cause]  # the owner still serves
    assert owner.state == "running"
    assert rts.procs[0].supervisor.owned[child_ref.mesh_id].failed == {0: failure.cause}
    assert not unhandled.seen


def test_supervise_returning_false_fails_the_owner_and_escalates_to_the_root_chained(rts, unhandled):
    _, owner, child_ref = tree(rts, False)
    rts.broadcast(child_ref, "fail", by=rts.procs[0])
    assert unhandled.event.wait(TIMEOUT_S)
    top = unhandled.seen[0]
    assert top.mesh_name == "owner" and "unhandled failure of owned mesh 'child'" in top.cause
    assert [c.mesh_name for c in top.chained] == ["child"]
    assert owner.state == "failed"


def test_supervise_raising_fails_the_owner_with_the_new_exception_and_chains_the_original(rts, unhandled):
    _, _, child_ref = tree(rts, "raise")
    rts.broadcast(child_ref, "fail", by=rts.procs[0])
    assert unhandled.event.wait(TIMEOUT_S)
    top = unhandled.seen[0]
    assert "ValueError: supervisor gave up" in top.cause
    assert [c.mesh_name for c in top.chained] == ["child"]


def test_the_death_of_the_childs_proc_is_a_failure_delivered_to_its_owner(rts, unhandled):
    owner_ref, owner, _ = tree(rts, True)
    rts.network.kill(rts.procs[1].router.addr)
    assert owner.obj.seen.wait(TIMEOUT_S)
    failure = owner.obj.failures[0]
    assert failure.mesh_name == "child" and failure.ranks == [0] and "connection lost" in failure.cause
    assert not unhandled.seen  # handled; and the client's own mesh lives on proc 0, not 1
    assert rts.call(owner_ref, "supervised").get(TIMEOUT_S) == [failure.cause]


def test_at_the_root_a_failure_of_a_client_owned_mesh_goes_to_the_unhandled_hook(rts, unhandled):
    ref = rts.spawn("kids", Child)
    rts.broadcast(ref, "fail", rank=1)
    assert unhandled.event.wait(TIMEOUT_S)
    failure = unhandled.seen[0]
    assert failure.mesh_name == "kids" and failure.ranks == [1]
    assert rts.call(ref, "ping", rank=0).get(TIMEOUT_S) == "pong"  # failures are rank-scoped
    assert rts.client.supervisor.unusable(ref, [0]) is None
    assert "child broke" in (rts.client.supervisor.unusable(ref, [1]) or "")


def test_a_mesh_stopped_on_purpose_reports_no_failure_when_its_proc_goes(rts, unhandled):
    ref = rts.spawn("kids", Child, on=[rts.procs[1]])
    rts.client.stop_actor_mesh(ref).get(TIMEOUT_S)
    rts.network.kill(rts.procs[1].router.addr)
    probe = rts.spawn("probe", Child, on=[rts.procs[0]])
    rts.broadcast(probe, "fail")  # a failure after the kill, through the same hook
    assert unhandled.event.wait(TIMEOUT_S)
    assert [f.mesh_name for f in unhandled.seen] == ["probe"]
