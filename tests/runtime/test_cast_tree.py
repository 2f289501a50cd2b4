"""Casts to large meshes go down a bounded fan-out tree and call() results come back reduced."""

from __future__ import annotations

from typing import Any

import pytest
from monarch._mesh import actor_mesh
from monarch._mesh.runtime import get_runtime
from monarch.testing import proc_mesh

from tests.runtime.actors import Counter


@pytest.mark.parametrize(("extent", "processes"), [({"gpus": 64}, 16), ({"x": 16, "y": 16}, 16)])
def test_call_on_large_mesh_through_tree_returns_every_rank(extent: dict[str, int], processes: int) -> None:
    with proc_mesh(extent, processes=processes) as procs:
        mesh = procs.spawn("big", Counter, 1)
        router = get_runtime().router
        sent: list[str] = []
        orig = router.send_presequenced

        def counting(addr: str, env: Any, bufs: list[Any]) -> None:
            sent.append(addr)
            orig(addr, env, bufs)

        router.send_presequenced = counting  # type: ignore[method-assign]
        try:
            mesh.incr.broadcast(2)
            vm = mesh.where.call().get(timeout=60)
        finally:
            router.send_presequenced = orig  # type: ignore[method-assign]
        n = 1
        for v in extent.values():
            n *= v
        rows = list(vm.values())
        assert [r[0] for r in rows] == list(range(n))
        # the origin sent each cast to at most FANOUT procs, not to all of them
        assert 0 < len(sent) <= 2 * actor_mesh.FANOUT
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
            expected = list(range(50))
            if rank == 5:
                expected = sorted(expected + list(range(0, 50, 10)), key=lambda x: x)
            assert h[: len(h)] == h and sorted(h) == sorted(expected)
            assert [x for x in h] == _fifo(rank == 5)


def _fifo(with_calls: bool) -> list[int]:
    out = []
    for i in range(50):
        out.append(i)
        if with_calls and i % 10 == 0:
            out.append(i)
    return out
