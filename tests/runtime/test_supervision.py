"""Supervision on real processes and real signals (issue: failures reported fast, never hang)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from monarch.actor import ActorError, CallTimeout, Channel, MeshFailure, ProcMesh, SupervisionError
from monarch.testing import proc_mesh

from tests.runtime.failure_log import FailureLog
from tests.runtime.pidwait import wait_exited
from tests.runtime.sup_actors import Cleaner, Supervisor, Worker


@pytest.fixture
def procs() -> Iterator[ProcMesh]:
    with proc_mesh({"hosts": 2, "gpus": 2}) as p:
        yield p


def test_sigkill_during_a_call_raises_supervision_error_naming_the_signal(
    procs: ProcMesh, failures: FailureLog
) -> None:
    w = procs.spawn("w", Worker)
    pids = list(w.ping.call().get(timeout=10).values())
    victim = w.slice(hosts=1, gpus=0)
    started_port, started = Channel[int].open()
    fut = victim.hold.call_one(started_port, 30)
    assert started.recv().get(timeout=10) == pids[2]  # the call is running in the victim
    t0 = time.monotonic()
    os.kill(pids[2], signal.SIGKILL)
    with pytest.raises(SupervisionError, match="killed by signal 9"):
        fut.get(timeout=10)
    assert time.monotonic() - t0 < 2.0
    # later calls fail at once; the failure is rank-scoped
    with pytest.raises(SupervisionError, match=r"w\[2\]"):
        victim.ping.call_one().get(timeout=5)
    with pytest.raises(SupervisionError):
        w.ping.call().get(timeout=5)
    assert len(list(w.slice(hosts=0).ping.call().get(timeout=10).values())) == 2
    assert w.slice(hosts=1, gpus=1).ping.call_one().get(timeout=10) == pids[3]
    f = failures.wait_for("w")
    assert isinstance(f, MeshFailure) and f.ranks == [2] and "killed by signal 9" in f.cause


def test_sigkill_while_idle_reaches_the_owner_and_later_calls_fail_fast(
    procs: ProcMesh, failures: FailureLog
) -> None:
    w = procs.spawn("idle", Worker)
    pids = list(w.ping.call().get(timeout=10).values())
    os.kill(pids[0], signal.SIGKILL)
    f = failures.wait_for("idle")
    assert f.ranks == [0] and "killed by signal 9" in f.cause
    t0 = time.monotonic()
    with pytest.raises(SupervisionError, match="killed by signal 9"):
        w.slice(hosts=0, gpus=0).ping.call_one()
    assert time.monotonic() - t0 < 0.5


def test_exception_in_broadcast_handler_fails_only_that_actor(
    procs: ProcMesh, failures: FailureLog
) -> None:
    w = procs.spawn("bc", Worker)
    w.slice(hosts=0, gpus=1).boom.broadcast()
    f = failures.wait_for("bc")
    assert (
        f.ranks == [1] and "ValueError: boom in handler" in f.cause and "Traceback" in f.traceback
    )
    with pytest.raises(SupervisionError, match=r"bc\[1\] and all its descendants have failed:\s+ValueError"):
        w.slice(hosts=0, gpus=1).ping.call_one().get(timeout=5)
    assert len(list(w.slice(hosts=1).ping.call().get(timeout=10).values())) == 2


def test_exception_in_init_fails_the_actor_and_calls_say_why(
    procs: ProcMesh, failures: FailureLog
) -> None:
    w = procs.spawn("badinit", Worker, True)
    with pytest.raises(SupervisionError, match="no data"):
        w.slice(hosts=0, gpus=0).ping.call_one().get(timeout=10)
    assert "no data" in failures.wait_for("badinit").cause


def test_exceptions_in_reply_adverbs_are_actor_errors_and_the_actor_survives(
    procs: ProcMesh, failures: FailureLog
) -> None:
    w = procs.spawn("ok", Worker)
    one = w.slice(hosts=0, gpus=0)
    with pytest.raises(ActorError):
        one.boom.call_one().get(timeout=10)
    with pytest.raises(ActorError):
        w.boom.call().get(timeout=10)
    with pytest.raises(ActorError):
        w.boom.choose().get(timeout=10)
    items = list(one.stream_boom.stream())
    assert items[0].get() == 1
    with pytest.raises(ActorError, match="mid-stream"):
        items[1].get()
    assert len(list(w.ping.call().get(timeout=10).values())) == 4
    assert not failures.of("ok")


def test_explicit_response_port_endpoint_raising_fails_actor_and_caller_gets_supervision_error(
    procs: ProcMesh,
) -> None:
    w = procs.spawn("port", Worker)
    with pytest.raises(SupervisionError, match="KeyError"):
        w.slice(hosts=0, gpus=0).bad_port.call_one().get(timeout=10)


def test_sys_exit_in_handler_fails_the_proc(procs: ProcMesh, failures: FailureLog) -> None:
    w = procs.spawn("exit", Worker)
    with pytest.raises(SupervisionError, match=r"SystemExit|exited"):
        w.slice(hosts=1, gpus=1).exit_proc.call_one().get(timeout=10)
    assert failures.wait_for("exit").ranks == [3]


def test_call_timeouts_per_endpoint_and_per_call(procs: ProcMesh) -> None:
    w = procs.spawn("slow", Worker)
    one = w.slice(hosts=0, gpus=0)
    with pytest.raises(CallTimeout):
        one.slow_default.call_one().get(timeout=10)
    with pytest.raises(CallTimeout):
        one.block.with_timeout(0.2).call_one(5).get(timeout=10)
    # the proc keeps serving its other actors while that one is blocked
    assert w.slice(hosts=0, gpus=1).ping.call_one().get(timeout=5) > 0


def test_bad_input_is_an_error_and_harms_nothing(procs: ProcMesh, failures: FailureLog) -> None:

    from monarch._mesh.endpoint import Endpoint, EndpointSpec

    w = procs.spawn("bad", Worker)
    one = w.slice(hosts=0, gpus=0)
    ghost: Endpoint[Any, Any] = Endpoint(one, EndpointSpec(name="nope", py_name="nope"))
    with pytest.raises(ActorError, match="no endpoint 'nope'"):
        ghost.call_one().get(timeout=10)
    ghost.broadcast()
    with pytest.raises(TypeError):
        one.ping.call_one(threading.Lock())
    with pytest.raises(ActorError, match="cannot be encoded"):
        one.give_lock.call_one().get(timeout=10)
    Phantom = type("Phantom", (), {"__module__": "module_that_only_the_client_has"})
    sys.modules["module_that_only_the_client_has"] = type(sys)("module_that_only_the_client_has")
    sys.modules["module_that_only_the_client_has"].Phantom = Phantom  # type: ignore[attr-defined]
    try:
        with pytest.raises(ActorError, match="cannot decode"):
            one.block.call_one(Phantom()).get(timeout=10)
    finally:
        del sys.modules["module_that_only_the_client_has"]
    assert one.ping.call_one().get(timeout=10) > 0
    assert not failures.of("bad")


def test_malformed_frames_close_only_that_connection(procs: ProcMesh) -> None:
    import socket

    w = procs.spawn("frames", Worker)
    addr = w._ref.addrs[0]
    for junk in (b"\xff" * 64, b"\x00\x00\x00\x00\xff\xff\xff\x7f" + b"x" * 100, os.urandom(4096)):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(addr[5:])
        s.sendall(junk)
        s.close()
    assert w.ping.call().get(timeout=10) is not None


@pytest.mark.parametrize("policy", ["handle", "escalate", "raise"])
def test_supervise_handled_unhandled_and_raising(
    procs: ProcMesh, failures: FailureLog, policy: str
) -> None:
    sup = procs.slice(hosts=0, gpus=0).spawn(f"sup_{policy}", Supervisor, policy)
    assert sup.alive.call_one().get(timeout=10)
    sup.break_child.call_one().get(timeout=10)
    if policy == "handle":
        name, ranks, cause = sup.wait_failure.call_one("child").get(timeout=10)
        assert name == "child" and ranks == [0] and "boom in handler" in cause
        assert sup.alive.call_one().get(timeout=5)
        assert [(n, r) for n, r, _ in sup.seen.call_one().get(timeout=5)] == [("child", [0])]
        assert not failures.of(f"sup_{policy}")
    else:
        f = failures.wait_for(f"sup_{policy}")
        assert f.chained and f.chained[0].mesh_name == "child"
        if policy == "raise":
            assert "supervisor gave up" in f.cause
        with pytest.raises(SupervisionError):
            sup.alive.call_one().get(timeout=5)


def test_nested_mesh_whose_proc_dies_is_supervised_by_its_owner(
    procs: ProcMesh, failures: FailureLog
) -> None:
    sup = procs.slice(hosts=0, gpus=0).spawn("nested", Supervisor, "handle", "procs")
    pids = sup.child_pids.call_one().get(timeout=30)
    os.kill(pids[1], signal.SIGKILL)
    name, ranks, cause = sup.wait_failure.call_one("child").get(timeout=10)
    assert name == "child" and ranks == [1] and "killed by signal 9" in cause
    assert sup.alive.call_one().get(timeout=5)


def test_stop_runs_cleanup_and_stops_owned_meshes_first(procs: ProcMesh, tmp_path: Any) -> None:
    marker = str(tmp_path / "cleaned")
    c = procs.slice(hosts=0, gpus=0).spawn("cleaner", Cleaner, marker)
    grandchild = c.child_pid.call_one().get(timeout=30)
    c.stop().get(timeout=30)
    assert open(marker).read() == "cleaned"
    assert wait_exited([grandchild], 5) == []
    with pytest.raises(SupervisionError, match="stopped"):
        c.child_pid.call_one().get(timeout=5)


def _script(body: str) -> str:
    return textwrap.dedent(
        """
        import os, sys, time
        sys.path.insert(0, {root!r})
        from monarch.actor import this_host
        from tests.runtime.sup_actors import Worker
        """
    ).format(root=os.getcwd()) + textwrap.dedent(body)


def test_client_killed_with_sigkill_leaves_no_procs_within_2_s() -> None:
    code = _script(
        """
        procs = this_host().spawn_procs(per_host={"gpus": 3})
        w = procs.spawn("w", Worker)
        print(" ".join(str(p) for p in w.ping.call().get(timeout=30).values()), flush=True)
        time.sleep(60)  # an idle client, until the test SIGKILLs it
        """
    )
    p = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        line = p.stdout.readline()  # type: ignore[union-attr]
        pids = [int(x) for x in line.split()]
        assert len(pids) == 3
        os.kill(p.pid, signal.SIGKILL)
        p.wait(5)
        t0 = time.monotonic()
        assert wait_exited(pids, 2.5) == []
        assert time.monotonic() - t0 < 2.5
    finally:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.wait(5)


def test_default_unhandled_fault_hook_prints_a_report_and_exits_1() -> None:
    code = _script(
        """
        procs = this_host().spawn_procs(per_host={"gpus": 2})
        w = procs.spawn("trainers", Worker)
        w.ping.call().get(timeout=30)
        w.slice(gpus=1).boom.broadcast()
        time.sleep(20)  # main is busy elsewhere: the default hook must end the program by itself
        print("not reached")
        """
    )
    p = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        start_new_session=True,
    )
    assert p.returncode == 1
    assert "trainers[1]" in p.stderr and "ValueError: boom in handler" in p.stderr
    assert "KeyboardInterrupt" not in p.stderr and "not reached" not in p.stdout


def test_message_to_an_unknown_actor_is_refused_and_the_proc_keeps_serving(procs: ProcMesh) -> None:
    from monarch._mesh.actor_mesh import ActorMesh, MeshRef

    w = procs.spawn("known", Worker)
    ref = w._ref
    ghost_ref = MeshRef("ghost-0", "ghost", ref.addrs, ref.shape, Worker, ref.owner)
    ghost: Any = ActorMesh(ghost_ref)
    with pytest.raises(SupervisionError, match="no actor ghost-0"):
        ghost.slice(hosts=0, gpus=0).ping.call_one().get(timeout=10)
    assert len(list(w.ping.call().get(timeout=10).values())) == 4
