"""The client's view of the job for the admin endpoint: every proc's agent, and what they say.

- :class:`SystemAgents` keeps one :class:`~monarch._mesh.admin_agent.AdminAgent` (a system actor)
  per proc, spawned on first use over the runtime's own authenticated links, owned by a
  supervisor record that absorbs its failures (a proc's death is reported once, through the
  user's meshes).
- :func:`collect_status` asks every live proc's agent for its actors in parallel, each with a
  timeout, and merges what the client's supervision knows about failed procs and meshes;
  :func:`exec_all` and :func:`env_all` run a request on every live proc the same way.

Every coroutine here runs on the client runtime's event loop. See docs/tools.md.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

from .._core.shape import Extent, Point
from .actor_mesh import ActorMesh
from .admin_agent import AdminAgent

if TYPE_CHECKING:
    from .runtime import Runtime

__all__ = [
    "ADMIN_VERSION",
    "FAILED_PROCS_SHOWN",
    "STARTED_AT",
    "STATUS_TIMEOUT_S",
    "SystemAgents",
    "call_within",
    "collect_status",
    "env_all",
    "exec_all",
    "find_proc",
]

log = logging.getLogger("monarch.admin")

#: the version of the admin endpoint's documents (``admin_version`` in ``/v1/status``)
ADMIN_VERSION = 1
#: how long one proc may take to answer a status request, seconds
STATUS_TIMEOUT_S = 1.0
#: the same for a proc whose agent was just spawned (its first answer waits for its start)
FIRST_STATUS_TIMEOUT_S = 10.0
#: failed procs of wholly failed meshes listed by ``/v1/status``: the newest ones (by start
#: order); older ones are counted in ``failed_procs_omitted`` (see :func:`collect_status`)
FAILED_PROCS_SHOWN = 32
#: the client's start time that ``/v1/status`` and ``admin.json`` report (``time.time()`` when the
#: composition root imported the admin modules, as the client runtime starts)
STARTED_AT = time.time()


class _SystemOwner:
    """Owner of the agents' meshes: a proc's death is already reported through the user's own
    meshes, so the agents' share of it is absorbed here (not sent to the fault hook)."""

    def post_supervise(self, failure: Any) -> None:
        log.debug("admin agent failed: %s", failure.cause)


class SystemAgents:
    """One :class:`AdminAgent` per proc of this runtime, spawned on first use.

    Args:
        rt: this process's runtime.
    """

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self._owner = _SystemOwner()
        self._agents: dict[str, Any] = {}  # proc address -> one-point ActorMesh of its agent
        self.answered: set[str] = set()  # addresses whose agent has answered once
        self._lock = threading.Lock()
        self.cache: dict[str, dict[str, Any]] = {}  # proc address -> its last snapshot

    def __repr__(self) -> str:
        return f"<SystemAgents agents={len(self._agents)}>"

    def agents(self, addrs: list[str]) -> dict[str, Any]:
        """The agent of each address (spawning those missing; any thread)."""
        with self._lock:
            missing = [a for a in dict.fromkeys(addrs) if a not in self._agents]
            if missing:
                ext = Extent(["procs"], [len(missing)])
                ref = self.rt.spawn_actors(
                    "monarch_admin", AdminAgent, (), {}, missing, ext, self._owner
                )
                mesh: Any = ActorMesh(ref)
                for i, a in enumerate(missing):
                    self._agents[a] = mesh.slice(procs=i)
            return {a: self._agents[a] for a in addrs}

    def forget(self, addrs: set[str]) -> None:
        """Drop what is kept about these (dead, no longer listed) procs: their agent, their
        last snapshot (any thread)."""
        with self._lock:
            for a in addrs:
                self._agents.pop(a, None)
                self.cache.pop(a, None)
                self.answered.discard(a)

    def live_procs(self) -> list[str]:
        """Addresses of this runtime's procs that are alive (local children and remote)."""
        rt = self.rt
        addrs = rt.procs.alive() + rt.remote.alive()
        return [a for a in addrs if not rt.router.dead_reason(a)]


async def call_within(fut: Any, timeout_s: float) -> Any:
    """Await a runtime future (or any awaitable) for at most ``timeout_s`` seconds.

    Raises:
        TimeoutError: it did not complete in time.
    """
    return await asyncio.wait_for(_await(fut), timeout_s)


async def _await(fut: Any) -> Any:
    return await fut


def _proc_name(rt: Runtime, addr: str) -> tuple[str, str, int | None]:
    """``(proc id, proc mesh name, pid)`` from the client's records."""
    h = rt.procs.children.get(addr)
    if h is not None:
        return h.name, h.name.rpartition("/")[0] or h.name, h.pid
    return addr, "procs", None


async def collect_status(
    rt: Runtime, agents: SystemAgents, timeout_s: float = STATUS_TIMEOUT_S
) -> dict[str, Any]:
    """The ``GET /v1/status`` document (see docs/tools.md); runs on the runtime's loop.

    Which procs it lists: every running proc; a failed proc while an actor mesh with an actor
    there still has a running rank (a degraded mesh); of the other failed procs, the
    :data:`FAILED_PROCS_SHOWN` started last, the older ones only counted
    (``failed_procs_omitted``), so a long-lived client's document stays bounded. Procs stopped
    on purpose (a clean exit, or any proc of a stopped proc mesh) are left out.
    """
    t0 = time.perf_counter()
    live = agents.live_procs()
    by_addr = agents.agents(live) if live else {}
    addrs = list(live)
    answers = await asyncio.gather(
        *(
            call_within(
                by_addr[a].snapshot.call_one(),
                timeout_s if a in agents.answered else FIRST_STATUS_TIMEOUT_S,
            )
            for a in addrs
        ),
        return_exceptions=True,
    )
    snaps: dict[str, tuple[dict[str, Any] | None, str | None]] = {}
    for a, ans in zip(addrs, answers):
        if not isinstance(ans, BaseException):
            agents.answered.add(a)
        if isinstance(ans, BaseException):
            snaps[a] = (
                agents.cache.get(a),
                f"{type(ans).__name__}: {ans}"
                if not isinstance(ans, asyncio.TimeoutError)
                else "timeout",
            )
        else:
            agents.cache[a] = ans
            snaps[a] = (ans, None)
    # every proc the client knows, dead ones included (their failure from supervision)
    known = list(rt.procs.children) + [a for a in rt.remote.procs if a not in rt.procs.children]
    hosts: dict[str, dict[str, Any]] = {}
    owned = dict(rt.supervisor.owned)
    mesh_rows: dict[str, dict[str, Any]] = {}
    proc_groups: dict[str, list[dict[str, Any]]] = {}
    shown: set[str] = set()
    tally: list[tuple[str, dict[str, int], dict[str, Any]]] = []  # (mesh id, extent, actor row)
    omitted = _old_failed_procs(rt, known, owned)
    for a in known:
        if a in omitted:
            continue
        pid_name = _proc_name(rt, a)
        snap, problem = snaps.get(a, (agents.cache.get(a), None))
        dead = rt.router.dead_reason(a)
        # stopped on purpose (a clean exit, or a failed proc whose mesh was stopped since):
        # left out, so a long-lived client's list does not grow with every mesh it stopped
        if dead and _stopped_on_purpose(rt, a):
            continue
        shown.add(a)
        status = "running" if not dead else "failed"
        hostname = (snap or {}).get("hostname") or socket.gethostname()
        actors_out = []
        for act in (snap or {}).get("actors", []):
            rec = owned.get(act["mesh_id"])
            st = act["status"]
            if dead:
                st = (
                    "stopped"
                    if status == "stopped" or (rec is not None and rec.stopped)
                    else "failed"
                )
            elif rec is not None and act["rank"] in rec.failed and st == "running":
                st = "failed"
            row = {
                k: act[k]
                for k in (
                    "id",
                    "mesh",
                    "class",
                    "rank",
                    "coords",
                    "queue_depth",
                    "messages_handled",
                    "last_endpoint",
                    "failures",
                    "system",
                    "in_flight",
                )
            }
            row["status"] = st
            row["failure"] = act.get("failure") or (dead if dead and st == "failed" else None)
            actors_out.append(row)
            tally.append((act["mesh_id"], act["extent"], row))
        # actors the client spawned there that no snapshot reported (a proc that died before
        # its first status request): what the client's supervision records know
        seen = {x["id"] for x in actors_out}
        for rec in owned.values():
            if rec.stopped or rec.mesh_id.startswith("monarch_admin-"):
                continue
            shape = getattr(rec.ref, "shape", None)
            cls = getattr(rec.ref, "actor_cls", None)
            for r, ra in enumerate(rec.addrs):
                if ra != a or f"{rec.mesh_id}[{r}]" in seen:
                    continue
                failed = rec.failed.get(r)
                coords = dict(Point(r, shape.extent)) if shape is not None else {}
                actors_out.append(
                    {
                        "id": f"{rec.mesh_id}[{r}]",
                        "mesh": rec.name,
                        "class": f"{cls.__module__}.{cls.__qualname__}" if cls is not None else "?",
                        "rank": r,
                        "coords": coords,
                        "queue_depth": 0,
                        "messages_handled": 0,
                        "last_endpoint": None,
                        "failures": 0,
                        "system": False,
                        "in_flight": 0,
                        "status": "failed" if (dead or failed) else "running",
                        "failure": failed or (dead or None),
                    }
                )
                tally.append(
                    (
                        rec.mesh_id,
                        dict(zip(shape.labels, shape.sizes)) if shape is not None else {},
                        actors_out[-1],
                    )
                )
        user = [x for x in actors_out if not x["system"]]
        coords = dict(user[0]["coords"]) if user else {}
        proc: dict[str, Any] = {
            "id": pid_name[0],
            "mesh": pid_name[1],
            "rank": (snap or {}).get("rank", -1)
            if (snap or {}).get("rank", -1) >= 0
            else int(pid_name[0].rpartition("/")[2] or 0)
            if pid_name[0].rpartition("/")[2].isdigit()
            else 0,
            "coords": coords,
            "pid": (snap or {}).get("pid") or pid_name[2],
            "hostname": hostname,
            "addr": a,
            "status": status,
            "failure": dead if status == "failed" else None,
            "actors": actors_out,
        }
        if problem is not None and not dead:
            proc["unresponsive"] = True
            proc["problem"] = problem
        proc_groups.setdefault(proc["mesh"], []).append(proc)
        host = hosts.setdefault(
            hostname,
            {"id": hostname, "hostname": hostname, "addr": None, "status": "ok", "procs": []},
        )
        host["procs"].append(proc)
    agents.forget({a for a in agents.cache if a not in shown and rt.router.dead_reason(a)})
    for mesh_id, extent, row in tally:
        m = mesh_rows.setdefault(
            mesh_id,
            {
                "name": row["mesh"],
                "kind": "actor",
                "extent": extent,
                "alive": 0,
                "size": 0,
                "system": row["system"],
                "id": mesh_id,
            },
        )
        m["size"] += 1
        m["alive"] += row["status"] == "running"
    for mesh_id, m in mesh_rows.items():  # a wholly failed mesh with procs left out: all ranks
        rec = owned.get(mesh_id)
        if omitted and rec is not None and any(a in omitted for a in rec.addrs):
            m["size"] = len(rec.addrs)
    for rec in owned.values():  # meshes of the client whose procs were never reached
        if (
            rec.mesh_id not in mesh_rows
            and not rec.stopped
            and not rec.mesh_id.startswith("monarch_admin-")
            and any(a in shown for a in rec.addrs)
        ):
            shape = getattr(rec.ref, "shape", None)
            size = len(rec.addrs)
            n_failed = len(rec.failed)
            mesh_rows[rec.mesh_id] = {
                "name": rec.name,
                "kind": "actor",
                "id": rec.mesh_id,
                "extent": dict(zip(shape.labels, shape.sizes)) if shape is not None else {},
                "alive": 0 if rec.stopped else size - n_failed,
                "size": size,
                "system": False,
            }
    meshes = []
    for name, procs in proc_groups.items():
        meshes.append(
            {
                "name": name,
                "kind": "proc",
                "extent": _proc_extent(procs, mesh_rows),
                "alive": sum(p["status"] == "running" for p in procs),
                "size": len(procs),
            }
        )
    meshes += sorted(mesh_rows.values(), key=lambda m: (m["system"], m["name"]))
    return {
        "client": {
            "pid": os.getpid(),
            "name": "root",
            "argv": list(sys.argv),
            "started_at": STARTED_AT,
            "admin_version": ADMIN_VERSION,
        },
        "hosts": list(hosts.values()),
        "meshes": meshes,
        "failed_procs_omitted": len(omitted),
        "collected_at": time.time(),
        "collect_ms": (time.perf_counter() - t0) * 1000.0,
    }


def _stopped_on_purpose(rt: Runtime, addr: str) -> bool:
    h = rt.procs.children.get(addr)
    return (
        h is not None and h.exit_reason is not None and "exited with status 0" in h.exit_reason
    ) or addr in rt.supervisor.expected_exits


def _old_failed_procs(rt: Runtime, known: list[str], owned: dict[str, Any]) -> set[str]:
    """The failed procs ``collect_status`` leaves out: those of no actor mesh that still has a
    running rank, but for the :data:`FAILED_PROCS_SHOWN` last in ``known`` (start order)."""
    dead = {a for a in known if rt.router.dead_reason(a) and not _stopped_on_purpose(rt, a)}
    if len(dead) <= FAILED_PROCS_SHOWN:
        return set()
    pinned: set[str] = set()
    for rec in owned.values():
        if rec.stopped or rec.mesh_id.startswith("monarch_admin-"):
            continue  # the admin agents' meshes span every proc: they pin nothing
        if any(not rt.router.dead_reason(x) for x in rec.addrs):
            pinned.update(rec.addrs)
    candidates = [a for a in known if a in dead and a not in pinned]
    return set(candidates[: max(0, len(candidates) - FAILED_PROCS_SHOWN)])


def _proc_extent(
    procs: list[dict[str, Any]], mesh_rows: dict[str, dict[str, Any]]
) -> dict[str, int]:
    """A proc mesh's extent: that of a user actor mesh with one actor on each of its procs
    (the runtime keeps no record of a ProcMesh's dimensions), else ``{"procs": n}``."""
    n = len(procs)
    for m in mesh_rows.values():
        if m["system"] or m["size"] != n or not m["extent"]:
            continue
        if all(any(a["mesh"] == m["name"] for a in p["actors"]) for p in procs):
            return dict(m["extent"])
    return {"procs": n}


def find_proc(rt: Runtime, proc_id: str) -> str | None:
    """The address of the proc named ``proc_id`` (its id, or its address), or None."""
    for a, h in rt.procs.children.items():
        if h.name == proc_id or a == proc_id:
            return a
    return proc_id if proc_id in rt.remote.procs else None


async def exec_all(
    rt: Runtime, agents: SystemAgents, code: str | None, argv: list[str] | None, timeout_s: float
) -> list[dict[str, Any]]:
    """Run ``code`` or ``argv`` on every live proc (in parallel); one result per proc."""
    live = agents.live_procs()
    by_addr = agents.agents(live) if live else {}
    answers = await asyncio.gather(
        *(
            call_within(by_addr[a].exec.call_one(code, argv, timeout_s), timeout_s + 5.0)
            for a in live
        ),
        return_exceptions=True,
    )
    out = []
    for a, ans in zip(live, answers):
        pid_name = _proc_name(rt, a)
        snap = agents.cache.get(a) or {}
        row = {
            "proc": pid_name[0],
            "rank": snap.get("rank", -1),
            "hostname": snap.get("hostname") or socket.gethostname(),
            "pid": pid_name[2],
        }
        if isinstance(ans, BaseException):
            row.update(
                {
                    "stdout": "",
                    "stderr": "",
                    "returncode": None,
                    "error": f"{type(ans).__name__}: {ans}",
                }
            )
        else:
            row.update(ans)
        out.append(row)
    await _fill_ranks(rt, agents, out, live)
    return out


async def _fill_ranks(
    rt: Runtime, agents: SystemAgents, rows: list[dict[str, Any]], live: list[str]
) -> None:
    if any(r["rank"] < 0 for r in rows):
        by_addr = agents.agents(live)
        snaps = await asyncio.gather(
            *(call_within(by_addr[a].snapshot.call_one(), STATUS_TIMEOUT_S) for a in live),
            return_exceptions=True,
        )
        for a, row, s in zip(live, rows, snaps):
            if isinstance(s, dict):
                agents.cache[a] = s
                row["rank"], row["hostname"], row["pid"] = s["rank"], s["hostname"], s["pid"]
    rows.sort(key=lambda r: (r["proc"].rpartition("/")[0], r["rank"], r["proc"]))


async def env_all(rt: Runtime, agents: SystemAgents, prefix: str) -> list[dict[str, Any]]:
    """Every live proc's variables starting with ``prefix``."""
    live = agents.live_procs()
    by_addr = agents.agents(live) if live else {}
    answers = await asyncio.gather(
        *(call_within(by_addr[a].env.call_one(prefix), STATUS_TIMEOUT_S * 5) for a in live),
        return_exceptions=True,
    )
    out = []
    for a, ans in zip(live, answers):
        pid_name = _proc_name(rt, a)
        snap = agents.cache.get(a) or {}
        row: dict[str, Any] = {
            "proc": pid_name[0],
            "rank": snap.get("rank", -1),
            "hostname": snap.get("hostname") or socket.gethostname(),
            "pid": pid_name[2],
        }
        if isinstance(ans, BaseException):
            row.update({"env": None, "error": f"{type(ans).__name__}: {ans}"})
        else:
            row.update({"env": ans, "error": None})
        out.append(row)
    await _fill_ranks(rt, agents, out, live)
    return out
