"""Which failed procs ``/v1/status`` keeps listing (``monarch._mesh.admin_collect.collect_status``):
a degraded mesh's failed procs while the mesh has a running rank; of wholly failed meshes the
newest ``FAILED_PROCS_SHOWN`` (start order), older ones counted in ``failed_procs_omitted``;
nothing of a stopped mesh. On real procs, with the limit lowered to 1."""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

import pytest
from monarch._mesh import admin_collect, current
from monarch.actor import Actor, endpoint, this_host


class Pid(Actor):
    @endpoint
    def pid(self) -> int:
        return os.getpid()


def _status() -> dict[str, Any]:
    rt = current.installed()
    assert rt is not None and rt.admin is not None
    fut = asyncio.run_coroutine_threadsafe(
        admin_collect.collect_status(rt, rt.admin.agents), rt.loop
    )
    return fut.result(60.0)


def _procs_by_pid(doc: dict[str, Any]) -> dict[int, dict[str, Any]]:
    return {p["pid"]: p for h in doc["hosts"] for p in h["procs"]}


def _kill_and_wait(failures: Any, mesh_name: str, pids: list[int]) -> None:
    """SIGKILL ``pids`` and wait until the client has reported each rank of ``mesh_name`` there
    as failed (the report comes after the client marked the proc dead)."""
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    with failures._cond:
        ok = failures._cond.wait_for(
            lambda: (
                sum(len(f.ranks) for f in failures.items if f.mesh_name == mesh_name) >= len(pids)
            ),
            30.0,
        )
    assert ok, f"the client did not report {len(pids)} failed ranks of {mesh_name!r}"


def test_old_failed_procs_of_dead_meshes_are_counted_not_listed(
    failures: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(admin_collect, "FAILED_PROCS_SHOWN", 1)
    meshes = []
    try:
        pids: dict[str, list[int]] = {}
        for name in ("gone_a", "gone_b", "degraded"):
            procs = this_host().spawn_procs(per_host={"gpus": 2})
            meshes.append(procs)
            pids[name] = procs.spawn(name, Pid).pid.call().get(60.0).values()
        _kill_and_wait(failures, "gone_a", pids["gone_a"])
        _kill_and_wait(failures, "gone_b", pids["gone_b"])
        _kill_and_wait(failures, "degraded", pids["degraded"][:1])

        doc = _status()
        listed = _procs_by_pid(doc)
        # wholly failed meshes: only the proc started last is listed, the three older counted
        assert not {*pids["gone_a"], pids["gone_b"][0]} & listed.keys()
        assert listed[pids["gone_b"][1]]["status"] == "failed"
        assert doc["failed_procs_omitted"] >= 3
        # a degraded mesh keeps its failed proc listed, whatever the limit
        assert listed[pids["degraded"][0]]["status"] == "failed"
        assert listed[pids["degraded"][1]]["status"] == "running"
        rows = {m["name"]: m for m in doc["meshes"]}
        assert (rows["degraded"]["alive"], rows["degraded"]["size"]) == (1, 2)
        # a mesh with a listed proc keeps its row, all its ranks counted; one with none has none
        assert "gone_a" not in rows and (rows["gone_b"]["alive"], rows["gone_b"]["size"]) == (0, 2)

        # stopping the degraded mesh's procs removes them, the failed one too
        meshes.pop().stop().get(30.0)
        listed = _procs_by_pid(_status())
        assert not set(pids["degraded"]) & listed.keys()
    finally:
        for procs in meshes:
            procs.stop().get(30.0)
    # stopped meshes leave nothing behind
    doc = _status()
    assert not {p for ps in pids.values() for p in ps} & _procs_by_pid(doc).keys()
