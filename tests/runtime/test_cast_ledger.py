"""The origin's ledger of casts sent through other hosts' heads (runtime/_mesh/cast_ledger.py)
and what a cast down a multi-host tree awaits from whom (``_Plan``), without processes: a fake
router records what is sent and what is handed to its skip record."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from monarch._core.shape import Shape
from monarch._mesh import actor_mesh
from monarch._mesh.cast_ledger import CastLedger
from monarch._transport.frame import Envelope


class FakeRouter:
    addr = "tcp:10.0.0.1:1"

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.dead: dict[str, str] = {}
        self.sent: list[tuple[str, int, list[int], list[str]]] = []
        self.skips: list[tuple[str, str, int]] = []
        self.lost_callbacks: list[Any] = []

    def on_peer_lost(self, cb: Any) -> None:
        self.lost_callbacks.append(cb)

    def dead_reason(self, addr: str) -> str | None:
        return self.dead.get(addr)

    def forwarded(self, fwd: str, dest: str, seq: int) -> None:
        self.skips.append((fwd, dest, seq))

    def send(self, addr: str, env: Any, bufs: list[Any], *, seq: int = 0, **_: Any) -> None:
        self.sent.append((addr, seq, list(env.ranks), [h.addr for h in env.forward]))

    def lose(self, addr: str) -> None:
        self.dead[addr] = "gone"
        for cb in self.lost_callbacks:
            cb(addr, "gone")


@pytest.fixture
def router() -> Iterator[FakeRouter]:
    r = FakeRouter()
    yield r
    r.loop.close()  # never run: the ledger only queues its prune timer there


def _hosts(n: int, per_host: int = 1) -> list[str]:
    return [f"tcp:10.0.1.{h}:{100 + g}" for h in range(n) for g in range(per_host)]


def _cast(router: FakeRouter, ledger: CastLedger, addrs: list[str], pending: Any = None) -> Any:
    """Record one cast over ``addrs`` as ``_send_tree`` does; its edges and sequence numbers."""
    tree = actor_mesh._cast_tree([(a, [r]) for r, a in enumerate(addrs)])
    seqs = {a: 7 for a in addrs}
    edges = []

    def walk(hops: list[Any], parent: str | None) -> None:
        for a, rs, sub in hops:
            if parent is not None and actor_mesh._host_of(parent) != actor_mesh._host_of(a):
                edges.append((parent, a, rs, sub))
            walk(sub, a)

    walk(tree, None)
    env = Envelope.new_message()
    env.payload = b"x" * 10
    rec = ledger.add(env, [], seqs, edges, pending)
    ledger.sent(rec)
    return tree, edges


def test_a_lost_forwarder_host_has_its_cast_resent_to_the_head_below_it_with_its_subtree(
    router: FakeRouter,
) -> None:
    ledger = CastLedger(router, retain_s=60.0)
    addrs = _hosts(10, per_host=2)  # 10 hosts: 5 top heads, each forwarding to one other host
    tree, edges = _cast(router, ledger, addrs)
    assert [a for a, _, _ in tree] == [addrs[0], addrs[4], addrs[8], addrs[12], addrs[16]]
    assert [(f, c) for f, c, _, _ in edges] == [(addrs[4 * i], addrs[4 * i + 2]) for i in range(5)]
    router.lose(addrs[0])
    # host 1's head gets the cast itself, with its own rank and its host's other proc below it
    assert router.sent == [(addrs[2], 7, [2], [addrs[3]])]
    assert ledger.resent == 1
    router.lose(addrs[0])  # once only
    assert ledger.resent == 1


def test_a_cast_dropped_from_the_ledger_goes_to_the_skip_record_of_its_forwarder(
    router: FakeRouter,
) -> None:
    ledger = CastLedger(router, retain_s=0.0)
    addrs = _hosts(10, per_host=2)
    _cast(router, ledger, addrs)
    ledger.prune()  # older than retain_s: handed over, every proc below each forwarder host
    assert sorted(router.skips) == sorted(
        (addrs[4 * i], addrs[4 * i + 2 + k], 7) for i in range(5) for k in range(2)
    )
    router.lose(addrs[0])
    assert router.sent == []  # skipped below it instead (the router tells them)


def test_an_awaited_call_is_kept_however_old_and_dropped_once_answered(router: FakeRouter) -> None:
    ledger = CastLedger(router, retain_s=0.0)
    awaited = [True]
    _cast(router, ledger, _hosts(10), pending=lambda: awaited[0])
    ledger.prune()
    assert router.skips == [] and len(ledger._records) == 1
    awaited[0] = False
    ledger.prune()
    assert len(ledger._records) == 0 and len(router.skips) == 5


def test_a_child_host_lost_too_gets_nothing_and_its_own_loss_resends_below_it(
    router: FakeRouter,
) -> None:
    ledger = CastLedger(router, retain_s=60.0)
    addrs = _hosts(10)
    router.dead[addrs[1]] = "gone"  # host 1 died first (nothing forwards through it here)
    _cast(router, ledger, addrs)
    router.lose(addrs[0])
    assert router.sent == []


def test_a_tree_call_awaits_each_cross_host_forwarder_and_a_stream_only_its_own_host() -> None:
    addrs = _hosts(10, per_host=2)
    shape = Shape(["hosts", "gpus"], 0, [10, 2], [2, 1])
    plan = actor_mesh._Plan(shape, addrs)
    assert plan.tree
    call = plan.tree_expected()
    # each top head for its subtree: its own host and the host it forwards to
    assert call == {addrs[4 * i]: set(range(4 * i, 4 * i + 4)) for i in range(5)}
    stream = plan.stream_expected()
    # each proc for its own position, a host's head also for its host's other proc
    for h in range(10):
        assert stream[addrs[2 * h]] == {2 * h, 2 * h + 1}
        assert stream[addrs[2 * h + 1]] == {2 * h + 1}
