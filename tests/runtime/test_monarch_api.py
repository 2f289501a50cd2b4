"""Monarch API surface on real processes: current_actor_name, Actor.logger, Instance.abort/kill/stop,
mesh.size()/sizes, str(Point), HostMesh extras, shutdown_context, ChannelTransport and the
importable-but-unbuilt names of ``monarch.actor``."""

from __future__ import annotations

import logging
import os
import pickle
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import monarch.actor as ma
import pytest
from monarch.actor import Extent, Point, ProcMesh, SupervisionError, this_host
from monarch.testing import proc_mesh

from tests.runtime.api_actors import Introspect, Reassigns, SelfEnding
from tests.runtime.failure_log import FailureLog

ROOT = Path(__file__).resolve().parents[2]




@pytest.fixture
def procs() -> Iterator[ProcMesh]:
    with proc_mesh({"hosts": 1, "gpus": 2}) as p:
        yield p


# -- current_actor_name, Actor.logger -----------------------------------------------------------
def test_current_actor_name_is_the_running_actors_id_and_the_clients_outside(procs: ProcMesh) -> None:
    mesh = procs.spawn("intro", Introspect)
    names = mesh.whoami.call().get(timeout=30)
    for _point, (name, actor_id) in names.items():
        assert name == actor_id
    assert len({n for _p, (n, _i) in names.items()}) == 2
    assert ma.current_actor_name() == ma.context().actor_instance.actor_id
    assert isinstance(ma.current_actor_name(), str)


def test_actor_logger_is_named_after_the_class_at_debug_and_cached(procs: ProcMesh) -> None:
    mesh = procs.spawn("intro", Introspect)
    name, level, cached = mesh.slice(gpus=0).logger_info.call_one().get(timeout=30)
    assert (name, level, cached) == ("Introspect", logging.DEBUG, True)


def test_actor_logger_can_be_replaced_by_assignment(procs: ProcMesh) -> None:
    mesh = procs.spawn("reassigns", Reassigns)
    assert mesh.slice(gpus=1).logger_name.call_one().get(timeout=30) == "reassigned"


# -- Instance.abort / kill / stop -------------------------------------------------------------
@pytest.mark.parametrize(("reason", "shown"), [(None, "no reason provided"), ("disk full", "disk full")])
def test_abort_fails_the_actor_and_its_owner_gets_the_reason(
    procs: ProcMesh, failures: FailureLog, reason: str | None, shown: str
) -> None:
    mesh = procs.slice(gpus=0).spawn("aborter", SelfEnding)
    with pytest.raises(SupervisionError):
        mesh.do_abort.call_one(reason).get(timeout=30)
    failure = failures.wait_for("aborter")
    assert "SelfEnding" in failure.report() and f"explicitly aborted due to: {shown}" in failure.report()
    with pytest.raises(SupervisionError):
        mesh.ping.call_one().get(timeout=30)


def test_kill_fails_the_actor_with_a_supervision_error_to_its_owner(procs: ProcMesh, failures: FailureLog) -> None:
    mesh = procs.slice(gpus=1).spawn("killer", SelfEnding)
    with pytest.raises(SupervisionError):
        mesh.do_kill.call_one("enough").get(timeout=30)
    assert "killed due to: enough" in failures.wait_for("killer").report()


def test_stop_ends_the_actor_gracefully_without_a_failure(procs: ProcMesh, failures: FailureLog, tmp_path: Path) -> None:
    marker = tmp_path / "cleanup"
    mesh = procs.slice(gpus=0).spawn("stopper", SelfEnding)
    mesh.do_stop.call_one(str(marker)).get(timeout=30)  # the handler itself completes
    with pytest.raises(SupervisionError):
        mesh.ping.call_one().get(timeout=30)
    assert marker.read_text() == "clean"
    assert not [f for f in failures.items if f.mesh_name == "stopper"]


def test_instance_abort_kill_stop_in_the_client_raise_runtime_error() -> None:
    inst = ma.context().actor_instance
    for method in (inst.abort, inst.kill, inst.stop):
        with pytest.raises(RuntimeError, match="not an actor"):
            method("x")


# -- mesh.size(), mesh.sizes, str(Point) ------------------------------------------------------
def test_mesh_size_is_a_method_with_monarchs_dimension_argument(procs: ProcMesh) -> None:
    assert procs.size() == 2 and len(procs) == 2
    assert procs.size("gpus") == 2 and procs.size("hosts") == 1
    assert procs.size(["hosts", "gpus"]) == 2 and procs.size(()) == 1
    assert procs.sizes == {"hosts": 1, "gpus": 2}
    assert procs.slice(gpus=0).sizes == {"hosts": 1}
    with pytest.raises(KeyError, match="nodes"):
        procs.size("nodes")
    mesh = procs.spawn("intro", Introspect)
    assert mesh.size("gpus") == 2 and mesh.sizes == {"hosts": 1, "gpus": 2}


def test_str_of_a_point_shows_coordinate_over_size_and_repr_is_unchanged() -> None:
    p = Point(5, Extent(["hosts", "gpus"], [2, 3]))
    assert str(p) == "{'hosts': 1/2, 'gpus': 2/3}"
    assert repr(p) == "Point({'hosts': 1, 'gpus': 2}, rank=5)"


# -- HostMesh ---------------------------------------------------------------------------------
def test_this_host_is_not_fake_in_process_its_procs_are_other_processes() -> None:
    host = this_host()
    assert host.is_fake_in_process is False
    with proc_mesh({"gpus": 1}) as p:
        pid = p.spawn("intro", Introspect).getpid.call_one().get(timeout=30)
    assert pid != os.getpid()


def test_with_python_executable_checks_the_path_and_keeps_the_original_mesh(tmp_path: Path) -> None:
    host = this_host()
    other = host.with_python_executable(sys.executable)
    assert other is not host and other.extent == host.extent and "python=" in repr(other)
    assert "python=" not in repr(host)
    with pytest.raises(ValueError, match="not an executable file"):
        host.with_python_executable(str(tmp_path / "missing"))
    with pytest.raises(TypeError):
        host.with_python_executable(3)  # type: ignore[arg-type]


def test_procs_spawned_from_with_python_executable_run_that_interpreter_and_pass_it_on(tmp_path: Path) -> None:
    from tests.runtime.api_actors import Marked

    wrapper = tmp_path / "python-wrapper"
    wrapper.write_text(f'#!/bin/sh\nWRAPPED_BY_TEST=yes exec {sys.executable} "$@"\n')
    wrapper.chmod(0o755)
    procs = this_host().with_python_executable(str(wrapper)).spawn_procs({"gpus": 1})
    try:
        mesh = procs.spawn("marked", Marked)
        assert mesh.marker.call_one().get(60) == "yes"
        assert mesh.nested_marker.call_one().get(120) == "yes"
    finally:
        procs.stop().get(30)


# -- shutdown_context (in a fresh client: it ends that process's runtime) ----------------------
_SHUTDOWN_SCRIPT = textwrap.dedent(
    """
    import os, sys
    from monarch.actor import shutdown_context, this_host
    from tests.runtime.api_actors import Introspect
    from tests.runtime.pidwait import wait_exited

    assert shutdown_context().get(timeout=5) is None  # no runtime yet: starts none
    procs = this_host().spawn_procs(per_host={"gpus": 2})
    pids = list(procs.spawn("intro", Introspect).getpid.call().get(timeout=30).values())
    first = shutdown_context()
    assert first.get(timeout=30) is None
    again = shutdown_context()
    assert again.done() and again.get(timeout=0) is None
    left = wait_exited(pids, 20.0)
    assert not left, f"procs still alive after shutdown_context: {left}"
    print("OK", len(pids))
    """
)


def test_shutdown_context_stops_every_proc_and_is_idempotent() -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run(
        [sys.executable, "-c", _SHUTDOWN_SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "OK 2" in done.stdout


# -- ChannelTransport and the names Monarch's monarch.actor has --------------------------------
def test_channel_transport_has_monarchs_members_and_pickles() -> None:
    from monarch.config import ChannelTransport

    names = {m.name for m in ChannelTransport}
    assert {"Unix", "TcpWithLocalhost", "TcpWithHostname", "MetaTlsWithHostname", "Local", "Tls"} <= names
    for m in ChannelTransport:
        assert pickle.loads(pickle.dumps(m)) is m
    assert ChannelTransport.Unix.supported and not ChannelTransport.MetaTlsWithHostname.supported
    assert ma.ChannelTransport is ChannelTransport


def test_every_name_of_monarchs_monarch_actor_is_importable() -> None:
    upstream = [
        "Accumulator", "Actor", "ActorError", "current_actor_name", "as_endpoint", "current_rank",
        "current_size", "concurrent_endpoint", "endpoint", "Future", "Point", "ProcMesh", "ProcId",
        "Channel", "send", "shutdown_context", "ValueMesh", "debug_controller",
        "get_or_spawn_controller", "this_host", "this_proc", "default_bootstrap_cmd", "HostMesh",
        "context", "hosts_from_config", "Port", "PortReceiver", "Endpoint", "Extent",
        "run_worker_loop_forever", "attach_to_workers", "attach", "enable_transport", "Context",
        "ChannelTransport", "unhandled_fault_hook", "MeshFailure", "config", "get_meter", "span",
        "traced", "Uid",
    ]  # fmt: skip
    missing = [n for n in upstream if not hasattr(ma, n)]
    assert not missing
    assert ma.config is sys.modules["monarch.config"]
    assert ma.__all__ == sorted(ma.__all__)


@pytest.mark.parametrize(
    ("call", "needle"),
    [
        (lambda: ma.attach("tcp://h:1"), "issue 12"),
        (lambda: ma.default_bootstrap_cmd(), "issue 12"),
        (lambda: ma.debug_controller(), "debugger"),
        (lambda: ma.get_meter(), "metrics"),
        (lambda: ma.ProcId(), "ProcId"),
        (lambda: ma.Uid(), "Uid"),
    ],
)
def test_unbuilt_names_raise_not_implemented_when_used(call: Any, needle: str) -> None:
    with pytest.raises(NotImplementedError, match=needle):
        call()


def test_span_and_traced_are_no_op_shims_that_pass_results_and_errors_through() -> None:
    import asyncio

    with ma.span("step"):
        pass

    @ma.traced
    def add(a: int, b: int) -> int:
        return a + b

    @ma.traced(name="boom")
    async def boom() -> None:
        raise ValueError("inner")

    assert add(2, 3) == 5 and add.__name__ == "add"
    with pytest.raises(ValueError, match="inner"):
        asyncio.run(boom())


def test_log_lines_inside_an_actor_carry_its_name_and_str_of_the_instance_names_it() -> None:
    from monarch.actor import context

    from tests.runtime.api_actors import LogsInside

    with proc_mesh({"f": 2}) as procs:
        line, name = procs.spawn("the_name", LogsInside).slice(f=0).log_and_name.call_one().get(60)
    expected = "tests.runtime.api_actors.LogsInside the_name{'f': 0/2}>"
    assert expected in name and name.startswith("<root>.<")
    assert line.startswith(f"[actor={name}] inside")
    assert str(context().actor_instance) == "<root>"
