"""ActorHost: spawning, delivering calls, refusing what cannot be handled, stopping meshes."""

from __future__ import annotations

import threading

import pytest
from monarch._core.errors import SupervisionError
from monarch._core.shape import Extent, Shape
from monarch._mesh.actor_mesh import MeshRef
from monarch.actor import Actor, endpoint
from monarch.testing import memory_runtimes

TIMEOUT_S = 5.0


class Gate(Actor):
    """Blocks in ``wait`` until ``release`` is called from the test (sync actor: own thread)."""

    gates: dict[str, threading.Event] = {}

    def __init__(self, key: str) -> None:
        self.key = key
        self.cleaned = False

    @endpoint
    def wait(self) -> str:
        entered = Gate.gates[self.key + ":entered"]
        entered.set()
        assert Gate.gates[self.key].wait(TIMEOUT_S)
        return "released"

    @endpoint
    def echo(self, x: object) -> object:
        return x

    def __cleanup__(self, exc: BaseException | None) -> None:
        Gate.gates[self.key + ":cleaned"].set()


@pytest.fixture
def rts():
    with memory_runtimes(2) as r:
        yield r


@pytest.fixture
def gate():
    key = f"g{id(object())}"
    for suffix in ("", ":entered", ":cleaned"):
        Gate.gates[key + suffix] = threading.Event()
    yield key
    Gate.gates[key].set()


def test_spawn_creates_one_actor_per_proc_with_its_rank(rts, gate):
    ref = rts.spawn("gates", Gate, gate)
    for r in range(2):
        inst = rts.actor(ref, r)
        assert inst.rank.rank == r and inst.state == "running"
        assert rts.procs[r].host.mesh_names[ref.mesh_id] == "gates"
        assert rts.call(ref, "echo", r, rank=r).get(TIMEOUT_S) == r


def test_spawn_local_hosts_actors_in_this_process_without_a_message(rts, gate):
    proc = rts.procs[0]
    rts.on_loop(proc, proc.host.spawn_local, "m-local", "local", Gate, (gate,), {}, [0], Extent(["procs"], [1]), rts.client.router.addr)
    ref = MeshRef("m-local", "local", (proc.router.addr,), Shape(["procs"], 0, [1]), Gate, rts.client.router.addr)
    assert rts.call(ref, "echo", "hi").get(TIMEOUT_S) == "hi"


def test_a_call_to_an_actor_this_proc_does_not_host_is_refused_with_supervision_error(rts):
    ref = MeshRef("missing", "missing", (rts.procs[0].router.addr,), Shape(["procs"], 0, [1]), Gate, rts.client.router.addr)
    with pytest.raises(SupervisionError, match=r"no actor missing\[0\] on procs/0"):
        rts.call(ref, "echo", 1).get(TIMEOUT_S)


def test_a_large_argument_travels_out_of_band_and_back(rts, gate):
    ref = rts.spawn("gates", Gate, gate, on=[rts.procs[0]])
    big = bytearray(range(256)) * 1024  # 256 KiB: above the out-of-band threshold
    assert rts.call(ref, "echo", big).get(TIMEOUT_S) == big


def test_stop_handles_queued_calls_first_then_refuses_later_ones_and_runs_cleanup(rts, gate):
    ref = rts.spawn("gates", Gate, gate, on=[rts.procs[0]])
    busy = rts.call(ref, "wait")
    assert Gate.gates[gate + ":entered"].wait(TIMEOUT_S)  # the actor is inside a handler
    queued = rts.call(ref, "echo", "before stop")
    stopped = rts.client.stop_actor_mesh(ref)
    late = rts.call(ref, "echo", "after stop")
    assert not stopped.done()
    Gate.gates[gate].set()
    assert busy.get(TIMEOUT_S) == "released"
    assert queued.get(TIMEOUT_S) == "before stop"
    stopped.get(TIMEOUT_S)
    assert Gate.gates[gate + ":cleaned"].is_set()
    with pytest.raises(SupervisionError, match="stopped: stopped by client"):
        late.get(TIMEOUT_S)
    assert rts.actor(ref).state == "stopped"
    assert rts.client.supervisor.unusable(ref, [0]) == "Supervision event: actor gates has status:\n  stopped: stopped by client"


def test_stopping_a_mesh_on_a_dead_proc_completes_at_once(rts, gate):
    ref = rts.spawn("gates", Gate, gate, on=[rts.procs[1]])
    sink_dead = rts.call(ref, "echo", 1)
    assert sink_dead.get(TIMEOUT_S) == 1
    rts.network.kill(rts.procs[1].router.addr)
    with pytest.raises(SupervisionError):
        rts.call(ref, "echo", 2).get(TIMEOUT_S)
    rts.client.stop_actor_mesh(ref).get(TIMEOUT_S)


def test_spawn_on_the_spawning_process_itself_is_hosted_locally(rts, gate):
    ref = rts.spawn("here", Gate, gate, on=[rts.client])
    assert rts.call(ref, "echo", "local").get(TIMEOUT_S) == "local"
    assert ref.mesh_id in rts.client.host.meshes


def test_a_call_that_arrives_before_its_mesh_spawn_is_delivered_once_the_spawn_arrives(rts, gate):
    from monarch._core.shape import Extent

    proc = rts.procs[0]
    ref = MeshRef("early", "early", (proc.router.addr,), Shape(["procs"], 0, [1]), Gate, rts.client.router.addr)
    answer = rts.call(ref, "echo", 7)  # the spawn comes later, as from another sender
    rts.on_loop(
        proc, proc.host.spawn_local, "early", "early", Gate, (gate,), {}, [0], Extent(["procs"], [1]), rts.client.router.addr
    )
    assert answer.get(TIMEOUT_S) == 7
