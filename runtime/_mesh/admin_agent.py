"""The admin endpoint's system actor, one per proc: what it reports and what it runs there.

:class:`AdminAgent` answers the client's :mod:`monarch._mesh.admin_collect` on the proc's event
loop: a snapshot of the proc's actors and their counters, ``exec`` requests (Python source on a
helper thread with its prints captured, or a command as a child process), the proc's environment,
and ``py-spy dump`` of itself. See docs/tools.md.
"""

from __future__ import annotations

import asyncio
import io
import os
import shutil
import socket
import sys
import threading
import traceback
from typing import Any

from . import logs
from .actor import Actor
from .endpoint import endpoint

__all__ = ["AdminAgent", "py_spy_dump", "validate_env_name"]

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
