"""The client's admin endpoint: one local HTTP/JSON API over the live job (issue 14).

Server side, in the client process:

- :class:`AdminEndpoint` binds ``127.0.0.1:<ephemeral>`` when the client runtime starts (a
  stdlib socket, cheap) and writes ``admin.json`` (URL, token, pid, argv, start time; mode 0600)
  into the client's private runtime folder. aiohttp is imported and its server started on the
  runtime's event loop only when the first connection arrives (``loop.add_reader`` on the
  listening socket), so a program that never uses the endpoint pays for a bind and a file.
  Every request must carry the token (``Authorization: Bearer <token>``, or ``?token=`` for a
  browser page); anything else gets 401. ``MONARCH_ADMIN=0`` turns the endpoint off.
- :class:`SystemAgents` keeps one :class:`AdminAgent` (a system actor) per proc, spawned on
  first use over the runtime's own authenticated links, owned by a supervisor record that
  absorbs its failures (a proc's death is reported once, through the user's meshes).
- :func:`collect_status` asks every live proc's agent for its actors in parallel, each with a
  timeout, and merges what the client's supervision knows about failed procs and meshes.

Endpoints (all JSON): ``GET /v1/status``, ``GET /v1/stack?proc=ID``, ``POST /v1/exec``,
``GET /v1/env?prefix=P``, ``GET /v1/ping``; ``GET /`` and ``/dashboard`` serve
``monarch/tools/dashboard.html`` when installed. See docs/tools.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import io
import json
import logging
import os
import secrets
import shutil
import socket
import sys
import threading
import time
import traceback
from typing import TYPE_CHECKING, Any

from .._core.shape import Extent, Point
from . import logs
from .actor import Actor
from .actor_mesh import ActorMesh
from .endpoint import endpoint

if TYPE_CHECKING:
    from .runtime import Runtime

__all__ = [
    "ADMIN_FILE",
    "ADMIN_VERSION",
    "AdminAgent",
    "AdminEndpoint",
    "SystemAgents",
    "collect_status",
    "validate_env_name",
]

log = logging.getLogger("monarch.admin")

ADMIN_VERSION = 1
#: the discovery file's name in the client's runtime folder
ADMIN_FILE = "admin.json"
#: set to ``0`` (or false/no/off) to turn the admin endpoint off
#: how long one proc may take to answer a status request, seconds
STATUS_TIMEOUT_S = 1.0
#: the same for a proc whose agent was just spawned (its first answer waits for its start)
FIRST_STATUS_TIMEOUT_S = 10.0
#: the default and the largest time one ``exec`` may run on a proc, seconds
EXEC_TIMEOUT_S = 30.0
EXEC_MAX_TIMEOUT_S = 600.0
# module prefixes of the runtime's own actors (shown with "system": true)
_SYSTEM_MODULES = ("monarch._", "monarch.tools", "monarch.tensor", "monarch.rdma")


def validate_env_name(name: Any) -> str:
    """Check an environment variable name (``os.environ`` key).

    Raises:
        TypeError: ``name`` is not a str.
        ValueError: ``name`` is empty or contains ``=`` or a NUL character.
    """
    if not isinstance(name, str):
        raise TypeError(f"environment variable names are str, got {type(name).__name__}")
    if not name or "=" in name or "\0" in name:
        raise ValueError(
            f"invalid environment variable name {name!r} (empty, or contains '=' or NUL)"
        )
    return name


# -- the system actor, one per proc ------------------------------------------------------------
class AdminAgent(Actor):
    """The runtime's system actor on one proc: reports the proc's actors, runs ``exec``
    requests and reads/writes its environment. Handlers run on the proc's event loop; ``exec``
    and ``stack`` are concurrent, so a long command never delays a status request."""

    def __init__(self) -> None:
        from .context import context

        self._host = context().actor_instance._actor.host

    @endpoint
    async def snapshot(self) -> dict[str, Any]:
        """This proc and the actors it hosts, with their counters."""
        host = self._host
        actors = []
        for mesh_id, by_rank in list(host.meshes.items()):
            for rank, inst in list(by_rank.items()):
                cls = inst.cls
                actors.append(
                    {
                        "id": inst.instance.actor_id,
                        "mesh_id": mesh_id,
                        "mesh": inst.name,
                        "class": f"{cls.__module__}.{cls.__qualname__}",
                        "rank": rank,
                        "coords": dict(inst.rank),
                        "extent": dict(zip(inst.rank.extent.labels, inst.rank.extent.sizes)),
                        "status": {"starting": "running"}.get(inst.state, inst.state),
                        "failure": inst.failure,
                        "queue_depth": inst.queue_depth,
                        "in_flight": len(inst._in_flight),
                        "messages_handled": inst.messages_handled,
                        "last_endpoint": inst.last_endpoint,
                        "failures": inst.failures,
                        "system": cls.__module__.startswith(_SYSTEM_MODULES)
                        and not cls.__module__.startswith("monarch.generated"),
                    }
                )
        pl = logs.proc_logs()
        return {
            "pid": os.getpid(),
            "hostname": socket.gethostname(),
            "name": host.router.name,
            "rank": pl.origin[1] if pl is not None else -1,
            "actors": actors,
        }

    @endpoint
    async def env(self, prefix: str = "", names: list[str] | None = None) -> dict[str, str | None]:
        """Variables of this proc's ``os.environ``: those named (None where unset), else those
        starting with ``prefix``."""
        if names is not None:
            return {n: os.environ.get(n) for n in names}
        return {k: v for k, v in sorted(os.environ.items()) if k.startswith(prefix)}

    @endpoint
    async def set_env(self, values: dict[str, str | None]) -> None:
        """Set (None: remove) variables in this proc's ``os.environ``."""
        for k, v in values.items():
            if v is None:
                os.environ.pop(validate_env_name(k), None)
            else:
                os.environ[validate_env_name(k)] = v

    @endpoint(concurrent=True)  # type: ignore[untyped-decorator]  # the keyword overload returns Any
    async def exec(
        self, code: str | None, argv: list[str] | None, timeout_s: float
    ) -> dict[str, Any]:
        """Run Python ``code`` inside this proc (on a helper thread, its prints captured), or the
        command ``argv`` as a child process; at most ``timeout_s`` seconds."""
        if argv is not None:
            return await _run_argv(argv, timeout_s)
        return await _run_code(code or "", timeout_s)

    @endpoint(concurrent=True)  # type: ignore[untyped-decorator]  # the keyword overload returns Any
    async def stack(self) -> dict[str, Any]:
        """``py-spy dump`` of this proc, run by the proc on itself (for procs on other hosts)."""
        return await py_spy_dump(os.getpid())


async def _run_argv(argv: list[str], timeout_s: float) -> dict[str, Any]:
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except OSError as exc:
        return {
            "stdout": "",
            "stderr": "",
            "returncode": None,
            "error": f"cannot run {argv[0]!r}: {exc}",
        }
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    except TimeoutError:
        proc.kill()
        out, err = await proc.communicate()
        return {
            "stdout": out.decode(errors="replace"),
            "stderr": err.decode(errors="replace"),
            "returncode": proc.returncode,
            "error": f"timed out after {timeout_s} s (killed)",
        }
    return {
        "stdout": out.decode(errors="replace"),
        "stderr": err.decode(errors="replace"),
        "returncode": proc.returncode,
        "error": None,
    }


class _ThreadStreams(io.TextIOBase):
    """``sys.stdout``/``sys.stderr`` while snippets run: writes from a snippet's thread go to its
    buffer, every other thread's to the stream it replaced."""

    def __init__(self, under: Any) -> None:
        self.under = under
        self.buffers: dict[int, io.StringIO] = {}

    def write(self, s: str) -> int:
        buf = self.buffers.get(threading.get_ident())
        if buf is not None:
            return buf.write(s)
        return int(self.under.write(s) or 0)

    def flush(self) -> None:
        if threading.get_ident() not in self.buffers:
            self.under.flush()


_streams_lock = threading.Lock()


def _exec_code(code: str) -> dict[str, Any]:
    me = threading.get_ident()
    out, err = io.StringIO(), io.StringIO()
    with _streams_lock:
        if not isinstance(sys.stdout, _ThreadStreams):
            sys.stdout = _ThreadStreams(sys.stdout)
        if not isinstance(sys.stderr, _ThreadStreams):
            sys.stderr = _ThreadStreams(sys.stderr)
        sys.stdout.buffers[me] = out
        sys.stderr.buffers[me] = err
    code_rc = 0
    try:
        exec(compile(code, "<monarch exec>", "exec"), {"__name__": "__monarch_exec__"})
    except SystemExit as exc:
        code_rc = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if exc.code is not None and not isinstance(exc.code, int):
            err.write(f"{exc.code}\n")
    except BaseException:
        err.write(traceback.format_exc())
        code_rc = 1
    finally:
        with _streams_lock:
            assert isinstance(sys.stdout, _ThreadStreams) and isinstance(sys.stderr, _ThreadStreams)
            sys.stdout.buffers.pop(me, None)
            sys.stderr.buffers.pop(me, None)
    return {
        "stdout": out.getvalue(),
        "stderr": err.getvalue(),
        "returncode": code_rc,
        "error": None,
    }


async def _run_code(code: str, timeout_s: float) -> dict[str, Any]:
    try:
        compile(code, "<monarch exec>", "exec")
    except SyntaxError:
        return {
            "stdout": "",
            "stderr": traceback.format_exc(limit=0),
            "returncode": 1,
            "error": None,
        }
    fut = asyncio.get_running_loop().run_in_executor(None, _exec_code, code)
    try:
        return await asyncio.wait_for(asyncio.shield(fut), timeout_s)
    except TimeoutError:
        return {
            "stdout": "",
            "stderr": "",
            "returncode": None,
            "error": f"timed out after {timeout_s} s (the snippet's thread keeps running in the proc)",
        }


async def py_spy_dump(pid: int, timeout_s: float = 10.0) -> dict[str, Any]:
    """``py-spy dump --pid PID``: ``{"pid", "text"}``, or ``{"pid", "error"}`` with the reason
    (py-spy missing, ptrace not allowed, timeout)."""
    exe = shutil.which("py-spy")
    if exe is None:
        return {"pid": pid, "error": "py-spy is not installed here (pip install py-spy)"}
    try:
        proc = await asyncio.create_subprocess_exec(
            exe,
            "dump",
            "--pid",
            str(pid),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    except TimeoutError:
        proc.kill()
        return {"pid": pid, "error": f"py-spy dump took more than {timeout_s} s"}
    except OSError as exc:
        return {"pid": pid, "error": f"cannot run py-spy: {exc}"}
    if proc.returncode != 0:
        msg = (err.decode(errors="replace") or out.decode(errors="replace")).strip()
        if "ermission" in msg or "ptrace" in msg.lower():
            msg += " (ptrace is not allowed here: run as root, grant CAP_SYS_PTRACE, or set kernel.yama.ptrace_scope=0)"
        return {"pid": pid, "error": f"py-spy dump failed: {msg}"}
    return {"pid": pid, "text": out.decode(errors="replace")}


# -- the client's view: agents, collection -------------------------------------------------------
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

    def live_procs(self) -> list[str]:
        """Addresses of this runtime's procs that are alive (local children and remote)."""
        rt = self.rt
        addrs = rt.procs.alive() + rt.remote.alive()
        return [a for a in addrs if not rt.router.dead_reason(a)]


async def _call(fut: Any, timeout_s: float) -> Any:
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
    """The ``GET /v1/status`` document (see docs/tools.md); runs on the runtime's loop."""
    t0 = time.perf_counter()
    live = agents.live_procs()
    by_addr = agents.agents(live) if live else {}
    addrs = list(live)
    answers = await asyncio.gather(
        *(
            _call(
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
    for a in known:
        pid_name = _proc_name(rt, a)
        snap, problem = snaps.get(a, (agents.cache.get(a), None))
        dead = rt.router.dead_reason(a)
        h = rt.procs.children.get(a)
        # stopped on purpose (a clean exit, or a failed proc whose mesh was stopped since):
        # left out, so a long-lived client's list does not grow with every mesh it stopped
        stopped = bool(dead) and (
            (
                h is not None
                and h.exit_reason is not None
                and "exited with status 0" in h.exit_reason
            )
            or a in rt.supervisor.expected_exits
        )
        if stopped:
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
            "started_at": _STARTED_AT,
            "admin_version": ADMIN_VERSION,
        },
        "hosts": list(hosts.values()),
        "meshes": meshes,
        "collected_at": time.time(),
        "collect_ms": (time.perf_counter() - t0) * 1000.0,
    }


_STARTED_AT = time.time()


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


def _find_proc(rt: Runtime, proc_id: str) -> str | None:
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
        *(_call(by_addr[a].exec.call_one(code, argv, timeout_s), timeout_s + 5.0) for a in live),
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
            *(_call(by_addr[a].snapshot.call_one(), STATUS_TIMEOUT_S) for a in live),
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
        *(_call(by_addr[a].env.call_one(prefix), STATUS_TIMEOUT_S * 5) for a in live),
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


# -- the HTTP endpoint ------------------------------------------------------------------------
class AdminEndpoint:
    """The admin endpoint of the client (see the module docstring).

    Args:
        rt: the client's runtime (its loop serves the endpoint).
        agents: the runtime's system agents.

    Raises:
        OSError: 127.0.0.1 cannot be bound, or ``admin.json`` cannot be written.
    """

    def __init__(self, rt: Runtime, agents: SystemAgents) -> None:
        self.rt = rt
        self.agents = agents
        self.token = secrets.token_urlsafe(32)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.path = os.path.join(rt.runtime_dir, ADMIN_FILE)
        self._runner: Any = None
        self._closed = False
        doc = {
            "url": self.url,
            "token": self.token,
            "pid": os.getpid(),
            "argv": list(sys.argv),
            "started_at": _STARTED_AT,
        }
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f)
        rt.loop.call_soon_threadsafe(self._arm)

    def __repr__(self) -> str:
        return f"<AdminEndpoint {self.url} serving={self._runner is not None}>"

    def _arm(self) -> None:
        if not self._closed:
            self.rt.loop.add_reader(self.sock.fileno(), self._first_connection)

    def _disarm(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.rt.loop.remove_reader(self.sock.fileno())
        self.sock.close()

    def _first_connection(self) -> None:
        self.rt.loop.remove_reader(self.sock.fileno())
        self.rt.loop.create_task(self._serve())

    async def _serve(self) -> None:
        from aiohttp import web  # only now: programs that never connect never import it

        @web.middleware
        async def auth(request: Any, handler: Any) -> Any:
            return await self._auth_impl(request, handler)

        app = web.Application(middlewares=[auth])
        app.router.add_get("/v1/ping", self._ping)
        app.router.add_get("/v1/status", self._status)
        app.router.add_get("/v1/stack", self._stack)
        app.router.add_post("/v1/exec", self._exec)
        app.router.add_get("/v1/env", self._env)
        app.router.add_get("/", self._dashboard)
        app.router.add_get("/dashboard", self._dashboard)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.SockSite(self._runner, self.sock).start()

    @property
    def _web(self) -> Any:
        from aiohttp import web

        return web

    def _json(self, doc: Any, status: int = 200) -> Any:
        return self._web.json_response(doc, status=status)

    async def _auth_impl(self, request: Any, handler: Any) -> Any:
        given = ""
        header = request.headers.get("Authorization", "")
        if header.startswith("Bearer "):
            given = header[7:].strip()
        elif "token" in request.query:
            given = request.query["token"]
        if not hmac.compare_digest(given.encode(), self.token.encode()):
            return self._json(
                {"error": "missing or wrong token (Authorization: Bearer <token from admin.json>)"},
                401,
            )
        return await handler(request)

    async def _ping(self, request: Any) -> Any:
        return self._json({"ok": True, "admin_version": ADMIN_VERSION, "pid": os.getpid()})

    async def _status(self, request: Any) -> Any:
        return self._json(await collect_status(self.rt, self.agents))

    async def _stack(self, request: Any) -> Any:
        proc_id = request.query.get("proc", "")
        addr = _find_proc(self.rt, proc_id)
        if addr is None:
            return self._json({"proc": proc_id, "error": f"no proc {proc_id!r} in this job"}, 404)
        if self.rt.router.dead_reason(addr):
            return self._json(
                {
                    "proc": proc_id,
                    "error": f"the proc is not running: {self.rt.router.dead_reason(addr)}",
                },
                200,
            )
        h = self.rt.procs.children.get(addr)
        if h is not None:  # same host: py-spy from here (the client is the proc's parent)
            res = await py_spy_dump(h.pid)
        else:
            try:
                res = await _call(self.agents.agents([addr])[addr].stack.call_one(), 15.0)
            except Exception as exc:
                res = {"pid": None, "error": f"{type(exc).__name__}: {exc}"}
        return self._json({"proc": proc_id, **res})

    async def _exec(self, request: Any) -> Any:
        try:
            body = await request.json()
        except Exception:
            return self._json(
                {"error": 'the body must be JSON: {"code": "..."} or {"argv": [...]}'}, 400
            )
        if not isinstance(body, dict):
            return self._json({"error": "the body must be a JSON object"}, 400)
        code, argv = body.get("code"), body.get("argv")
        timeout_s = body.get("timeout_s", EXEC_TIMEOUT_S)
        if (code is None) == (argv is None):
            return self._json(
                {"error": 'give exactly one of "code" (Python source) or "argv" (a command)'}, 400
            )
        if code is not None and not isinstance(code, str):
            return self._json({"error": '"code" must be a string'}, 400)
        if argv is not None and (
            not isinstance(argv, list) or not argv or not all(isinstance(x, str) for x in argv)
        ):
            return self._json({"error": '"argv" must be a non-empty list of strings'}, 400)
        if (
            not isinstance(timeout_s, (int, float))
            or isinstance(timeout_s, bool)
            or not 0 < timeout_s <= EXEC_MAX_TIMEOUT_S
        ):
            return self._json(
                {"error": f'"timeout_s" must be a number of seconds in (0, {EXEC_MAX_TIMEOUT_S}]'},
                400,
            )
        return self._json(
            {"results": await exec_all(self.rt, self.agents, code, argv, float(timeout_s))}
        )

    async def _env(self, request: Any) -> Any:
        return self._json(
            {"results": await env_all(self.rt, self.agents, request.query.get("prefix", ""))}
        )

    async def _dashboard(self, request: Any) -> Any:
        import importlib.resources

        try:
            page = (importlib.resources.files("monarch.tools") / "dashboard.html").read_text()
        except (OSError, ModuleNotFoundError):
            return self._web.Response(
                status=404, text="the dashboard is not installed (monarch/tools/dashboard.html)"
            )
        return self._web.Response(text=page, content_type="text/html")

    def close(self) -> None:
        """Stop serving and remove ``admin.json`` (any thread)."""
        self._closed = True
        with contextlib.suppress(RuntimeError):
            self.rt.loop.call_soon_threadsafe(self._disarm)
        with contextlib.suppress(OSError):
            os.unlink(self.path)
