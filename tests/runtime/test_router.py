"""Router: per-origin FIFO, held frames and their bound, skip lists, peer death, heartbeats.

Routers run on their own loop threads over monarch.testing's in-memory transport.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest
from monarch._core.errors import ConnectError, SupervisionError
from monarch._mesh.router import Router, RouterLimits
from monarch._mesh.sinks import OneSink
from monarch._transport.frame import Envelope
from monarch._transport.messages import ControlOp, Kind
from monarch._transport.pickle_codec import PICKLE_CODEC
from monarch.testing import MemoryNetwork

TIMEOUT_S = 5.0


class Node:
    """One router on its own loop thread, recording the calls it dispatches."""

    def __init__(self, net: MemoryNetwork, name: str, limits: RouterLimits | None) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.calls: list[int] = []
        self.cond = threading.Condition()
        self.router: Router = self.run(
            lambda: Router(self.loop, f"mem:{name}", transport=net.transport_factory(self.loop), name=name, limits=limits)
        )
        self.router.set_call_handler(self._call)
        self.addr = self.router.addr

    def _call(self, env: Any, bufs: list[memoryview]) -> None:
        with self.cond:
            self.calls.append(int(env.payload.decode()))
            self.cond.notify_all()

    def run(self, fn: Any, *args: Any) -> Any:
        async def call() -> Any:
            return fn(*args)

        return asyncio.run_coroutine_threadsafe(call(), self.loop).result(TIMEOUT_S)

    def wait(self, pred: Any) -> None:
        with self.cond:
            assert self.cond.wait_for(pred, TIMEOUT_S), f"timed out; calls={self.calls}"

    def stop(self) -> None:
        try:
            self.run(self.router.close)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(TIMEOUT_S)


@pytest.fixture
def nodes():
    net = MemoryNetwork()
    made: list[Node] = []

    def make(name: str, limits: RouterLimits | None = None) -> Node:
        made.append(Node(net, name, limits))
        return made[-1]

    make.net = net  # type: ignore[attr-defined]
    yield make
    for n in made:
        n.stop()


def call(tag: int, origin: str = "") -> Any:
    env = Envelope.new_message()
    env.kind = Kind.CALL
    env.origin = origin
    env.payload = str(tag).encode()
    return env


def test_frames_arriving_out_of_order_are_dispatched_in_the_origins_order(nodes):
    a, b = nodes("a"), nodes("b")
    seqs = [a.router.next_seq(b.addr) for _ in range(4)]  # fixed at the origin, as cast trees do
    for s in reversed(seqs):
        a.router.send(b.addr, call(s, a.addr), [], seq=s)
    b.wait(lambda: len(b.calls) == 4)
    assert b.calls == [1, 2, 3, 4]
    assert b.router._held == {}  # nothing left waiting


def test_later_frames_wait_for_a_gap_then_go_in_order(nodes):
    a, b = nodes("a"), nodes("b")
    s1, s2, s3 = (a.router.next_seq(b.addr) for _ in range(3))
    a.router.send(b.addr, call(s2, a.addr), [], seq=s2)
    a.router.send(b.addr, call(s3, a.addr), [], seq=s3)
    a.router.send(b.addr, call(0, a.addr), [], sequenced=False)  # unsequenced: not held
    b.wait(lambda: b.calls == [0])
    assert sorted(b.run(lambda: dict(b.router._held[a.addr]))) == [s2, s3]
    a.router.send(b.addr, call(s1, a.addr), [], seq=s1)
    b.wait(lambda: len(b.calls) == 4)
    assert b.calls == [0, 1, 2, 3]


def test_the_held_frames_bound_closes_the_link_that_overflows_it(nodes):
    a, b = nodes("a"), nodes("b", RouterLimits(max_held_frames=2, peer_timeout_s=None))
    lost = threading.Event()
    a.router.on_peer_lost(lambda addr, reason: lost.set())
    a.router.next_seq(b.addr)  # seq 1 never sent: everything after it is held
    for _ in range(3):
        s = a.router.next_seq(b.addr)
        a.router.send(b.addr, call(s, a.addr), [], seq=s)
    assert lost.wait(TIMEOUT_S)
    assert "connection lost" in (a.router.dead_reason(b.addr) or "")
    assert b.calls == []
    assert len(b.router._held[a.addr]) == 2  # the third was refused, not held


def test_a_skip_list_from_the_origin_releases_frames_waiting_for_seqs_lost_with_a_forwarder(nodes):
    a, fwd, c = nodes("a"), nodes("fwd"), nodes("c")
    s1 = a.router.next_seq(c.addr)
    a.router.send(c.addr, call(s1, a.addr), [], seq=s1)
    s2 = a.router.next_seq(c.addr)
    a.router.forwarded(fwd.addr, c.addr, s2)  # seq 2 travels through fwd, which dies with it
    s3 = a.router.next_seq(c.addr)
    a.router.send(c.addr, call(s3, a.addr), [], seq=s3)
    c.wait(lambda: c.calls == [1])
    a.run(a.router.mark_dead, fwd.addr, "killed by signal 9 (SIGKILL)")
    c.wait(lambda: c.calls == [1, 3])
    assert c.router._held == {} and c.router._skip == {}


def test_a_skip_list_arriving_before_the_gap_is_remembered_for_later_frames(nodes):
    a, fwd, c = nodes("a"), nodes("fwd"), nodes("c")
    s1 = a.router.next_seq(c.addr)
    a.router.forwarded(fwd.addr, c.addr, s1)
    a.run(a.router.mark_dead, fwd.addr, "gone")
    s2 = a.router.next_seq(c.addr)
    a.router.send(c.addr, call(s2, a.addr), [], seq=s2)
    c.wait(lambda: c.calls == [2])


def test_mark_dead_fails_exactly_the_sinks_waiting_on_that_peer(nodes):
    a, b, c = nodes("a"), nodes("b"), nodes("c")
    on_b = OneSink(a.router, PICKLE_CODEC, {b.addr: {0}})
    on_c = OneSink(a.router, PICKLE_CODEC, {c.addr: {0}})
    a.run(a.router.mark_dead, b.addr, "exited with status 1")
    with pytest.raises(SupervisionError, match="exited with status 1"):
        on_b.future.get(TIMEOUT_S)
    assert not on_c.future.done()
    assert on_b.port not in a.router.sinks and on_c.port in a.router.sinks
    with pytest.raises(SupervisionError, match="on proc mem:b and all its descendants have failed"):
        a.router.send(b.addr, call(1, a.addr), [])


def test_a_killed_peer_is_declared_dead_and_its_waiters_fail(nodes):
    a, b = nodes("a"), nodes("b")
    a.router.send(b.addr, call(1, a.addr), [])
    b.wait(lambda: b.calls == [1])
    sink = OneSink(a.router, PICKLE_CODEC, {b.addr: {0}})
    nodes.net.kill(b.addr)
    with pytest.raises(SupervisionError, match="connection lost"):
        sink.future.get(TIMEOUT_S)


def test_connecting_to_an_address_nobody_listens_on_declares_it_dead(nodes):
    a = nodes("a")
    sink = OneSink(a.router, PICKLE_CODEC, {"mem:nobody": {0}})
    # on the loop thread the dial runs after send() returned (see the race test below)
    a.run(a.router.send, "mem:nobody", call(1, a.addr), [])
    with pytest.raises(SupervisionError, match="cannot connect to mem:nobody"):
        sink.future.get(TIMEOUT_S)


def test_a_send_from_another_thread_to_an_unreachable_address_raises_only_documented_errors(nodes):
    a = nodes("a")
    for i in range(200):
        try:
            a.router.send(f"mem:nobody-{i}", call(1, a.addr), [])
        except (SupervisionError, ConnectError):
            pass  # documented: known dead / cannot be reached


def test_a_send_to_itself_is_dispatched_on_the_loop_without_a_link(nodes):
    a = nodes("a")
    a.router.send(a.addr, call(7), [])
    a.wait(lambda: a.calls == [7])
    assert a.router._out == {}


def test_a_watched_child_that_stops_beating_is_declared_hung_and_dead(nodes):
    limits = RouterLimits(peer_timeout_s=0.1, start_timeout_s=0.1)
    parent, child = nodes("parent", limits), nodes("child")
    hung: list[tuple[str, str]] = []
    hung_ev = threading.Event()
    parent.router.on_hung(lambda addr, reason: (hung.append((addr, reason)), hung_ev.set()))
    beats = threading.Semaphore(0)

    def beat() -> None:
        try:
            child.router.send_control(parent.addr, ControlOp.HEARTBEAT, sequenced=False)
        except SupervisionError:
            return
        beats.release()
        child.loop.call_later(0.02, beat)

    parent.run(parent.router.watch, child.addr)
    child.run(beat)
    for _ in range(15):  # 0.3 s of beating: three times the timeout, and still alive
        assert beats.acquire(timeout=TIMEOUT_S)
    assert not hung and parent.router.dead_reason(child.addr) is None
    nodes.net.freeze(child.addr)  # SIGSTOP: the child's heartbeats stop arriving
    assert hung_ev.wait(TIMEOUT_S)
    assert hung[0][0] == child.addr and "no heartbeat for" in hung[0][1]
    assert "hung" in (parent.router.dead_reason(child.addr) or "")


def test_a_watched_child_that_never_beats_is_declared_hung_since_it_was_started(nodes):
    parent, child = nodes("parent", RouterLimits(peer_timeout_s=0.05, start_timeout_s=0.05)), nodes("child")
    sink = OneSink(parent.router, PICKLE_CODEC, {child.addr: {0}})
    parent.run(parent.router.watch, child.addr)
    with pytest.raises(SupervisionError, match="since it was started"):
        sink.future.get(TIMEOUT_S)



def test_a_silent_child_the_os_says_is_running_is_not_killed_before_the_frozen_bound(nodes):
    limits = RouterLimits(peer_timeout_s=0.1, start_timeout_s=0.1, frozen_timeout_s=0.6)
    parent, child = nodes("parent", limits), nodes("child")
    state = ["R"]
    hung_at: list[float] = []
    hung_ev = threading.Event()
    parent.router.on_hung(lambda addr, reason: (hung_at.append(time.monotonic()), hung_ev.set()))
    start = time.monotonic()
    parent.run(parent.router.watch, child.addr, lambda: state[0])
    assert hung_ev.wait(TIMEOUT_S)  # never beats, runs: declared only at the frozen bound
    assert hung_at[0] - start >= 0.6
    assert "frozen" in (parent.router.dead_reason(child.addr) or "")


def test_a_silent_child_the_os_says_is_stopped_is_declared_hung_at_the_peer_timeout(nodes):
    limits = RouterLimits(peer_timeout_s=0.1, start_timeout_s=0.1, frozen_timeout_s=60.0)
    parent, child = nodes("parent", limits), nodes("child")
    hung_ev = threading.Event()
    parent.router.on_hung(lambda addr, reason: hung_ev.set())
    parent.run(parent.router.watch, child.addr, lambda: "T")
    assert hung_ev.wait(TIMEOUT_S)
    assert "stopped" in (parent.router.dead_reason(child.addr) or "")
