"""Casts to large meshes go down a bounded fan-out tree and call() results come back reduced."""

from __future__ import annotations

from typing import Any

import pytest
from monarch._mesh import actor_mesh
from monarch._mesh.current import current_runtime
from monarch._transport.messages import Kind
from monarch.testing import proc_mesh

from tests.runtime.actors import Counter


@pytest.mark.parametrize(("extent", "processes"), [({"gpus": 64}, 16), ({"x": 16, "y": 16}, 16)])
def test_call_on_large_mesh_goes_down_a_tree_and_replies_are_reduced(
    extent: dict[str, int], processes: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    with proc_mesh(extent, processes=processes) as procs:
        mesh = procs.spawn("big", Counter, 1)
        mesh.initialized.get(timeout=60)
        router = current_runtime().router
        calls_sent: list[str] = []
        replies_received: list[int] = []
        orig_send, orig_dispatch = router.send, router._dispatch

        def counting_send(addr: str, msg: Any, bufs: list[Any], **kw: Any) -> None:
            if getattr(msg, "kind", None) == Kind.CALL:
                calls_sent.append(addr)
            orig_send(addr, msg, bufs, **kw)

        def counting_dispatch(env: Any, bufs: list[memoryview]) -> None:
            if env.kind == Kind.REPLY:
                replies_received.append(len(env.parts))
            orig_dispatch(env, bufs)

        monkeypatch.setattr(router, "send", counting_send)
        monkeypatch.setattr(router, "_dispatch", counting_dispatch)
        mesh.incr.broadcast(2)
        vm = mesh.where.call().get(timeout=60)
        monkeypatch.undo()
        n = 1
        for v in extent.values():
            n *= v
        rows = list(vm.values())
        assert [r[0] for r in rows] == list(range(n))
        # the origin sent each of the two casts to at most FANOUT procs, not to all 16 ...
        assert len(calls_sent) == 2 * actor_mesh.FANOUT
        # ... and received the n results of call() as at most FANOUT reduced replies
        assert len(replies_received) <= actor_mesh.FANOUT
        assert sum(replies_received) == n
        assert list(mesh.value.call().get(timeout=60).values()) == [3] * n
        sub = mesh.slice(**{next(iter(extent)): slice(1, None, 3)})
        vals = sub.where.call().get(timeout=60)
        assert [r[1] for r in vals.values()] == list(range(len(sub)))


def test_deep_tree_with_small_fanout_keeps_fifo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(actor_mesh, "FANOUT", 2)
    with proc_mesh({"gpus": 12}, processes=12) as procs:
        mesh = procs.spawn("deep", Counter)
        for i in range(50):
            mesh.record.broadcast(i)
            if i % 10 == 0:
                mesh.slice(gpus=5).record.call_one(i).get(timeout=30)
        hist = mesh.history.call().get(timeout=60)
        for rank, h in enumerate(hist.values()):
            assert list(h) == _fifo(rank == 5)


def _fifo(with_calls: bool) -> list[int]:
    out = []
    for i in range(50):
        out.append(i)
        if with_calls and i % 10 == 0:
            out.append(i)
    return out
