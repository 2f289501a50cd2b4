"""The in-memory transport of monarch.testing: the base.Transport contract without sockets."""

from __future__ import annotations

import asyncio
import socket
import threading
from typing import Any

import pytest
from monarch._core.errors import ConnectError, ProtocolError
from monarch._transport.base import TransportSettings
from monarch._transport.frame import Envelope, encode_frame
from monarch.testing import MemoryNetwork, MemoryTransport

TIMEOUT_S = 5.0


class Proc:
    """One "process": an event loop thread and a transport recording what it receives."""

    def __init__(self, net: MemoryNetwork, name: str, settings: TransportSettings | None = None, listen: bool = True) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.frames: list[tuple[Any, Any, list[bytes], threading.Thread]] = []
        self.closes: list[tuple[Any, BaseException | None]] = []
        self.accepted: list[Any] = []
        self.cond = threading.Condition()
        self.on_frame_hook: Any = None
        self.transport = MemoryTransport(self.loop, self._frame, self._close, network=net, settings=settings)
        self.addr = f"mem:{name}"
        if listen:
            self.run(self.transport.listen, self.addr, self._accept)

    def run(self, fn: Any, *args: Any) -> Any:
        fut = asyncio.run_coroutine_threadsafe(_call(fn, *args), self.loop)
        return fut.result(TIMEOUT_S)

    def _frame(self, link: Any, env: Any, bufs: list[memoryview]) -> None:
        if self.on_frame_hook is not None:
            self.on_frame_hook(link, env)
        with self.cond:
            self.frames.append((link, env, [bytes(b) for b in bufs], threading.current_thread()))
            self.cond.notify_all()

    def _close(self, link: Any, exc: BaseException | None) -> None:
        with self.cond:
            self.closes.append((link, exc))
            self.cond.notify_all()

    def _accept(self, link: Any) -> None:
        self.accepted.append(link)

    def wait(self, pred: Any) -> None:
        with self.cond:
            assert self.cond.wait_for(pred, TIMEOUT_S), "timed out"

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(TIMEOUT_S)


async def _call(fn: Any, *args: Any) -> Any:
    return fn(*args)


@pytest.fixture
def net():
    n = MemoryNetwork()
    procs: list[Proc] = []
    n.make = lambda *a, **k: procs.append(Proc(n, *a, **k)) or procs[-1]  # type: ignore[attr-defined]
    yield n
    for p in procs:
        p.stop()


def frame(seq: int, payload: bytes = b"", bufs: list[bytes] | None = None) -> list[Any]:
    env = Envelope.new_message()
    env.kind = "call"
    env.seq = seq
    env.origin = "mem:a"
    env.payload = payload
    env.buffers = [len(b) for b in bufs or []]
    return encode_frame(env, list(bufs or []))


def test_frames_cross_through_the_envelope_codec_and_arrive_on_the_receivers_loop(net):
    a, b = net.make("a"), net.make("b")
    link = a.transport.connect(b.addr)
    link.send(frame(1, b"hello", [b"x" * 13, b"", b"yz"]))
    b.wait(lambda: b.frames)
    peer, env, bufs, thread = b.frames[0]
    assert (env.seq, env.origin, env.payload, env.buffers) == (1, "mem:a", b"hello", [13, 0, 2])
    assert bufs == [b"x" * 13, b"", b"yz"]
    assert thread is b.thread
    assert peer is b.accepted[0] and not peer.outgoing and peer.peer == a.addr
    assert link.outgoing and link.peer == b.addr and link.share([b"x"]) is None


def test_frames_sent_from_several_threads_arrive_in_send_order_per_link(net):
    a, b = net.make("a"), net.make("b")
    link = a.transport.connect(b.addr)
    order: list[int] = []
    lock = threading.Lock()
    seq = iter(range(1, 10_000))

    def sender() -> None:
        for _ in range(200):
            with lock:  # the order of send() calls is the order to keep
                n = next(seq)
                order.append(n)
                link.send(frame(n))

    threads = [threading.Thread(target=sender) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT_S)
    b.wait(lambda: len(b.frames) == 800)
    assert [f[1].seq for f in b.frames] == order


def test_connect_to_an_unknown_address_returns_a_link_that_closes_with_connect_error(net):
    a = net.make("a")
    link = a.transport.connect("mem:nobody")  # returns a link; the failure comes later, by the handler
    a.wait(lambda: a.closes)
    closed, exc = a.closes[0]
    assert closed is link and link.closed
    assert isinstance(exc, ConnectError) and "mem:nobody" in str(exc)
    with pytest.raises(ConnectionError):
        link.send(frame(1))


def test_listen_and_connect_reject_sockets_foreign_and_taken_addresses(net):
    a = net.make("a")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with pytest.raises(TypeError, match="no sockets"):
            a.run(a.transport.listen, s, lambda link: None)
        with pytest.raises(TypeError, match="adopt"):
            a.transport.adopt("mem:x", s)
    finally:
        s.close()
    with pytest.raises(ValueError, match="mem:NAME"):
        a.run(a.transport.listen, "unix:/tmp/x.sock", lambda link: None)
    with pytest.raises(ValueError, match="mem:NAME"):
        a.transport.connect("tcp:127.0.0.1:1")
    with pytest.raises(OSError, match="in use"):
        a.run(a.transport.listen, a.addr, lambda link: None)


def test_close_delivers_what_was_sent_then_ends_the_peer_once(net):
    a, b = net.make("a"), net.make("b")
    link = a.transport.connect(b.addr)
    for n in range(1, 4):
        link.send(frame(n))
    a.run(link.close)
    b.wait(lambda: b.closes)
    assert [f[1].seq for f in b.frames] == [1, 2, 3]
    assert b.closes == [(b.accepted[0], None)]
    assert a.closes == [(link, None)]
    a.run(link.close)  # a second close reports nothing
    assert len(a.closes) == 1


def test_an_oversized_envelope_closes_the_receiving_link_with_protocol_error(net):
    a = net.make("a")
    b = net.make("b", TransportSettings(max_envelope_bytes=256))
    link = a.transport.connect(b.addr)
    link.send(frame(1, b"small"))
    link.send(frame(2, b"x" * 1000))
    link.send(frame(3))
    b.wait(lambda: b.closes)
    assert [f[1].seq for f in b.frames] == [1]
    assert isinstance(b.closes[0][1], ProtocolError)
    a.wait(lambda: a.closes)  # the dialer sees the end of stream
    assert a.closes[0][1] is None


def test_a_protocol_error_raised_by_the_frame_handler_closes_that_link(net):
    a, b = net.make("a"), net.make("b")

    def hostile(link: Any, env: Any) -> None:
        if env.seq == 2:
            raise ProtocolError("spoofed origin")

    b.on_frame_hook = hostile
    link = a.transport.connect(b.addr)
    for n in (1, 2, 3):
        link.send(frame(n))
    b.wait(lambda: b.closes)
    assert [f[1].seq for f in b.frames] == [1]
    assert "spoofed" in str(b.closes[0][1])


def test_a_frozen_process_receives_and_sends_nothing_until_thawed_then_in_order(net):
    a, b = net.make("a"), net.make("b")
    link = a.transport.connect(b.addr)
    link.send(frame(1))
    b.wait(lambda: b.frames)
    net.freeze(b.addr)
    for n in (2, 3):
        link.send(frame(n))
    back = b.accepted[0]
    back.send(frame(9))  # a frozen process's frames are held too
    # a round trip on an unrelated link proves the held frames had every chance to arrive
    c = net.make("c")
    probe = c.transport.connect(a.addr)
    probe.send(frame(7))
    a.wait(lambda: any(f[1].seq == 7 for f in a.frames))
    assert [f[1].seq for f in b.frames] == [1]
    assert all(f[1].seq != 9 for f in a.frames)
    net.thaw(b.addr)
    b.wait(lambda: len(b.frames) == 3)
    a.wait(lambda: any(f[1].seq == 9 for f in a.frames))
    assert [f[1].seq for f in b.frames] == [1, 2, 3]


def test_a_partition_drops_frames_both_ways_until_healed(net):
    a, b = net.make("a"), net.make("b")
    link = a.transport.connect(b.addr)
    link.send(frame(1))
    b.wait(lambda: b.frames)
    net.partition(a.addr, b.addr)
    link.send(frame(2))
    net.heal(a.addr, b.addr)
    link.send(frame(3))
    b.wait(lambda: len(b.frames) == 2)
    assert [f[1].seq for f in b.frames] == [1, 3]
    assert not link.closed


def test_kill_ends_every_link_of_a_process_and_refuses_new_connections(net):
    a, b = net.make("a"), net.make("b")
    link = a.transport.connect(b.addr)
    link.send(frame(1))
    b.wait(lambda: b.frames)
    b.accepted[0].send(frame(5))
    net.kill(b.addr)
    a.wait(lambda: a.closes)
    assert [f[1].seq for f in a.frames] == [5]  # what it sent before dying still arrives
    assert a.closes == [(link, None)]
    again = a.transport.connect(b.addr)
    a.wait(lambda: len(a.closes) == 2)
    assert a.closes[1][0] is again and isinstance(a.closes[1][1], ConnectError)
    assert b.addr not in net.addresses()


def test_sever_resets_the_links_but_the_address_accepts_again(net):
    a, b = net.make("a"), net.make("b")
    link = a.transport.connect(b.addr)
    link.send(frame(1))
    b.wait(lambda: b.frames)
    net.sever(a.addr, b.addr)
    a.wait(lambda: a.closes)
    b.wait(lambda: b.closes)
    again = a.transport.connect(b.addr)
    again.send(frame(2))
    b.wait(lambda: len(b.frames) == 2)
    assert len(b.accepted) == 2


def test_transport_close_closes_listeners_and_links(net):
    a, b = net.make("a"), net.make("b")
    link = a.transport.connect(b.addr)
    link.send(frame(1))
    b.wait(lambda: b.frames)
    b.run(b.transport.close)
    a.wait(lambda: a.closes)
    assert b.addr not in net.addresses()
    assert repr(b.transport).startswith("<MemoryTransport")
