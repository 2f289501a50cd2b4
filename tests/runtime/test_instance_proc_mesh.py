"""``context().actor_instance.proc_mesh`` (Monarch's ``Instance.proc_mesh``): the mesh of procs
an actor was spawned over, where that is its own proc; a clear error for an actor of a
multi-proc mesh."""

from __future__ import annotations

import os

import pytest
from monarch.actor import Actor, ActorError, context, endpoint, get_or_spawn_controller, this_host


class Pid(Actor):
    @endpoint
    def pid(self) -> int:
        return os.getpid()


class Spawner(Actor):
    @endpoint
    def spawn_on_my_proc_mesh(self) -> Pid:
        return context().actor_instance.proc_mesh.spawn("pid", Pid)

    @endpoint
    def my_pid(self) -> int:
        return os.getpid()


def test_a_controllers_proc_mesh_is_the_client_process() -> None:
    ctl = get_or_spawn_controller("proc-mesh-test-controller", Spawner).get(timeout=60)
    child = ctl.spawn_on_my_proc_mesh.call_one().get(timeout=60)
    assert child.pid.call_one().get(timeout=60) == os.getpid()


def test_an_actor_of_a_one_proc_mesh_spawns_on_its_own_proc() -> None:
    procs = this_host().spawn_procs(per_host={"gpus": 1})
    try:
        spawner = procs.spawn("spawner", Spawner)
        child = spawner.spawn_on_my_proc_mesh.call_one().get(timeout=60)
        assert child.pid.call_one().get(timeout=60) == spawner.my_pid.call_one().get(timeout=60)
    finally:
        procs.stop().get(timeout=60)


def test_an_actor_of_a_multi_proc_mesh_gets_a_clear_error() -> None:
    procs = this_host().spawn_procs(per_host={"gpus": 2})
    try:
        spawner = procs.spawn("spawner", Spawner)
        with pytest.raises(ActorError, match=r"proc_mesh of .*one of 2 actors"):
            spawner.slice(gpus=0).spawn_on_my_proc_mesh.call_one().get(timeout=60)
    finally:
        procs.stop().get(timeout=60)
