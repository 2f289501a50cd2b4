"""Result sinks: delivery, peer loss, timeouts and once channels, over in-memory runtimes.

Replies are sent by a proc runtime's ActorHost (the real reply path: envelope codec, router,
transport) to sinks registered with the client's router.
"""

from __future__ import annotations

import pytest
from monarch._core.errors import ActorError, CallTimeout, SupervisionError
from monarch._core.shape import Shape
from monarch._mesh.sinks import OneSink, ReceiverSink, StreamSink, ValueMeshSink
from monarch._mesh.wire_errors import encode_error
from monarch._transport.pickle_codec import PICKLE_CODEC, dumps
from monarch.testing import memory_runtimes

TIMEOUT_S = 5.0


@pytest.fixture
def rts():
    with memory_runtimes(2) as r:
        yield r


def reply(rts, proc: int, port: int, pos: int, value: object, *, last: bool = True, error: bool = False) -> None:
    rt = rts.procs[proc]
    payload, bufs = encode_error(value, "a[0]") if error else PICKLE_CODEC.encode_result(value)  # type: ignore[arg-type]
    rt.host.send_part(rts.client.router.addr, port, pos, error, payload, list(bufs), last)


def end(rts, proc: int, port: int, pos: int) -> None:
    rts.procs[proc].host.send_part(rts.client.router.addr, port, pos, False, b"", [], True, empty=True)


def flush(rts, proc: int) -> None:
    """Wait until everything ``proc`` sent so far was handled by the client (FIFO per link)."""
    probe = OneSink(rts.client.router, PICKLE_CODEC, {addr(rts, proc): {0}})
    reply(rts, proc, probe.port, 0, "probe")
    assert probe.future.get(TIMEOUT_S) == "probe"


def addr(rts, i: int) -> str:
    return rts.procs[i].router.addr


def test_one_sink_delivers_a_value_with_out_of_band_buffers_and_closes_its_port(rts):
    sink = OneSink(rts.client.router, PICKLE_CODEC, {addr(rts, 0): {0}})
    big = bytes(range(256)) * 1024  # 256 KiB: travels as an out-of-band buffer
    reply(rts, 0, sink.port, 0, {"big": big, "n": 3})
    assert sink.future.get(TIMEOUT_S) == {"big": big, "n": 3}
    assert sink.port not in rts.client.router.sinks


def test_one_sink_raises_the_remote_exception_as_actor_error(rts):
    sink = OneSink(rts.client.router, PICKLE_CODEC, {addr(rts, 0): {0}})
    reply(rts, 0, sink.port, 0, ValueError("bad input"), error=True)
    with pytest.raises(ActorError, match="bad input"):
        sink.future.get(TIMEOUT_S)


def test_one_sink_fails_with_supervision_error_when_its_peer_dies(rts):
    sink = OneSink(rts.client.router, PICKLE_CODEC, {addr(rts, 0): {0}})
    rts.network.kill(addr(rts, 0))
    with pytest.raises(SupervisionError, match=addr(rts, 0)):
        sink.future.get(TIMEOUT_S)
    assert sink.port not in rts.client.router.sinks


def test_one_sink_is_not_failed_by_the_death_of_a_peer_it_does_not_wait_on(rts):
    sink = OneSink(rts.client.router, PICKLE_CODEC, {addr(rts, 0): {0}})
    probe = OneSink(rts.client.router, PICKLE_CODEC, {addr(rts, 1): {0}})
    rts.network.kill(addr(rts, 1))
    with pytest.raises(SupervisionError):
        probe.future.get(TIMEOUT_S)  # the death has been handled by now...
    assert not sink.future.done()  # ...and did not touch a sink waiting on another proc
    reply(rts, 0, sink.port, 0, 5)
    assert sink.future.get(TIMEOUT_S) == 5


def test_one_sink_timeout_raises_call_timeout_and_drops_a_late_reply(rts):
    sink = OneSink(rts.client.router, PICKLE_CODEC, {addr(rts, 0): {0}})
    rts.on_loop(rts.client, sink.timeout, 0.5)
    with pytest.raises(CallTimeout, match=r"0\.5 s"):
        sink.future.get(0)
    reply(rts, 0, sink.port, 0, 1)
    flush(rts, 0)
    assert isinstance(sink.future.exception(0), CallTimeout)


def test_value_mesh_sink_assembles_every_ranks_result_by_position(rts):
    sink = ValueMeshSink(rts.client.router, PICKLE_CODEC, {addr(rts, 0): {0}, addr(rts, 1): {1}}, Shape(["procs"], 0, [2]))
    reply(rts, 1, sink.port, 1, "one")
    reply(rts, 0, sink.port, 0, "zero")
    mesh = sink.future.get(TIMEOUT_S)
    assert [mesh.item(procs=i) for i in range(2)] == ["zero", "one"]


def test_value_mesh_sink_fails_at_once_when_a_proc_dies_without_waiting_for_the_others(rts):
    sink = ValueMeshSink(rts.client.router, PICKLE_CODEC, {addr(rts, 0): {0}, addr(rts, 1): {1}}, Shape(["procs"], 0, [2]))
    rts.network.kill(addr(rts, 1))
    with pytest.raises(SupervisionError, match=addr(rts, 1)):
        sink.future.get(TIMEOUT_S)


def test_value_mesh_sink_raises_the_first_error_result(rts):
    sink = ValueMeshSink(rts.client.router, PICKLE_CODEC, {addr(rts, 0): {0}, addr(rts, 1): {1}}, Shape(["procs"], 0, [2]))
    reply(rts, 0, sink.port, 0, KeyError("k"), error=True)
    reply(rts, 1, sink.port, 1, 1)
    with pytest.raises(ActorError, match="k"):
        sink.future.get(TIMEOUT_S)


def test_value_mesh_sink_timeout_raises_call_timeout(rts):
    sink = ValueMeshSink(rts.client.router, PICKLE_CODEC, {addr(rts, 0): {0}}, Shape(["procs"], 0, [1]))
    rts.on_loop(rts.client, sink.timeout, 1.0)
    with pytest.raises(CallTimeout):
        sink.future.get(0)


def test_stream_sink_yields_items_in_arrival_order_then_ends_after_every_rank_ended(rts):
    sink = StreamSink(rts.client.router, PICKLE_CODEC, {addr(rts, 0): {0}, addr(rts, 1): {1}}, 2)
    first = sink.next()  # waited on before anything arrived
    reply(rts, 0, sink.port, 0, "a0", last=False)
    assert first.get(TIMEOUT_S).get(0) == "a0"
    reply(rts, 0, sink.port, 0, "a1", last=False)
    end(rts, 0, sink.port, 0)
    reply(rts, 1, sink.port, 1, "b0", last=True)
    got = []
    while (item := sink.next().get(TIMEOUT_S)) is not None:
        got.append(item.get(0))
    assert got == ["a1", "b0"]
    assert sink.port not in rts.client.router.sinks


def test_stream_sink_gives_an_error_item_for_a_dead_proc_and_still_ends(rts):
    sink = StreamSink(rts.client.router, PICKLE_CODEC, {addr(rts, 0): {0}, addr(rts, 1): {1}}, 2)
    end(rts, 0, sink.port, 0)
    flush(rts, 0)
    rts.network.kill(addr(rts, 1))
    item = sink.next().get(TIMEOUT_S)
    assert item is not None
    with pytest.raises(SupervisionError, match=addr(rts, 1)):
        item.get(0)
    assert sink.next().get(TIMEOUT_S) is None


def test_receiver_sink_queues_values_in_order_for_recv(rts):
    sink = ReceiverSink()
    sink.port = rts.client.router.new_port(sink)
    waiting = sink.recv()
    for v in ("x", "y", "z"):
        reply(rts, 0, sink.port, 0, v, last=False)
    assert waiting.get(TIMEOUT_S) == "x"
    assert [sink.recv().get(TIMEOUT_S) for _ in range(2)] == ["y", "z"]


def test_a_once_receiver_sink_takes_one_value_and_closes_its_port(rts):
    router = rts.client.router
    sink = ReceiverSink(once_router=router)
    sink.port = router.new_port(sink)
    reply(rts, 0, sink.port, 0, 1, last=False)
    reply(rts, 0, sink.port, 0, 2, last=False)
    assert sink.recv().get(TIMEOUT_S) == 1
    flush(rts, 0)
    assert sink.port not in router.sinks
    assert not sink.recv().done()  # the second value never arrives


def test_a_receiver_sink_decodes_an_error_value_as_an_exception(rts):
    sink = ReceiverSink()
    sink.port = rts.client.router.new_port(sink)
    reply(rts, 0, sink.port, 0, RuntimeError("oops"), error=True)
    with pytest.raises(ActorError, match="oops"):
        sink.recv().get(TIMEOUT_S)


def test_a_reply_to_an_unknown_port_is_ignored(rts):
    payload, _ = dumps(1)
    rts.procs[0].host.send_part(rts.client.router.addr, 999_999, 0, False, payload, [], True)
    sink = OneSink(rts.client.router, PICKLE_CODEC, {addr(rts, 0): {0}})
    reply(rts, 0, sink.port, 0, "after")
    assert sink.future.get(TIMEOUT_S) == "after"
