"""The client's admin endpoint: one local HTTP/JSON API over the live job (issue 14).

:class:`AdminEndpoint`, in the client process, binds ``127.0.0.1:<ephemeral>`` when the client
runtime starts (a stdlib socket, cheap) and writes ``admin.json`` (URL, token, pid, argv, start
time; mode 0600) into the client's private runtime folder, and serves it on the runtime's event
loop with :class:`~monarch._mesh.admin_http.HttpServer` (stdlib only: a program that never uses
the endpoint pays for a bind, a file and a watched socket; the first request costs what later
ones do, where importing aiohttp took ~0.7 s of the client's loop).
Every request must carry the token (``Authorization: Bearer <token>``, or ``?token=`` for a
browser page); anything else gets 401. ``MONARCH_ADMIN=0`` turns the endpoint off.

What the routes answer is gathered by :mod:`monarch._mesh.admin_collect` from one
:class:`~monarch._mesh.admin_agent.AdminAgent` per proc.

Endpoints (all JSON): ``GET /v1/status``, ``GET /v1/stack?proc=ID``, ``POST /v1/exec``,
``GET /v1/env?prefix=P``, ``GET /v1/ping``; ``GET /`` and ``/dashboard`` serve
``monarch/tools/dashboard.html`` when installed. See docs/tools.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import os
import secrets
import socket
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from .admin_agent import py_spy_dump
from .admin_collect import (
    ADMIN_VERSION,
    STARTED_AT,
    SystemAgents,
    call_within,
    collect_status,
    env_all,
    exec_all,
    find_proc,
)
from .admin_http import HttpServer, Request, Response, json_response

if TYPE_CHECKING:
    from .runtime import Runtime

__all__ = ["ADMIN_FILE", "AdminEndpoint"]

#: the discovery file's name in the client's runtime folder
ADMIN_FILE = "admin.json"
#: the default and the largest time one ``exec`` may run on a proc, seconds
EXEC_TIMEOUT_S = 30.0
EXEC_MAX_TIMEOUT_S = 600.0


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
        self._server: HttpServer | None = None
        self._starting: asyncio.Task[None] | None = None  # kept: the loop holds tasks weakly
        self._closed = False
        self._routes: dict[str, tuple[str, Callable[[Request], Awaitable[Response]]]] = {
            "/v1/ping": ("GET", self._ping),
            "/v1/status": ("GET", self._status),
            "/v1/stack": ("GET", self._stack),
            "/v1/exec": ("POST", self._exec),
            "/v1/env": ("GET", self._env),
            "/": ("GET", self._dashboard),
            "/dashboard": ("GET", self._dashboard),
        }
        doc = {
            "url": self.url,
            "token": self.token,
            "pid": os.getpid(),
            "argv": list(sys.argv),
            "started_at": STARTED_AT,
        }
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f)
        rt.loop.call_soon_threadsafe(self._arm)

    def __repr__(self) -> str:
        return f"<AdminEndpoint {self.url} serving={self._server is not None}>"

    def _arm(self) -> None:
        if not self._closed:
            self._server = HttpServer(self.sock, self._route)
            self._starting = self.rt.loop.create_task(self._server.start())

    def _disarm(self) -> None:
        if self._server is not None:
            self._server.close()
        else:
            self.sock.close()

    async def _route(self, request: Request) -> Response:
        if not self._authorised(request):
            return json_response(
                {"error": "missing or wrong token (Authorization: Bearer <token from admin.json>)"},
                401,
            )
        route = self._routes.get(request.path)
        if route is None:
            return json_response({"error": f"no route {request.path!r}"}, 404)
        method, handler = route
        if request.method != method:
            return json_response(
                {"error": f"{request.path} takes {method}, not {request.method}"}, 405
            )
        return await handler(request)

    def _authorised(self, request: Request) -> bool:
        given = ""
        header = request.headers.get("authorization", "")
        if header.startswith("Bearer "):
            given = header[7:].strip()
        elif "token" in request.query:
            given = request.query["token"]
        return hmac.compare_digest(given.encode(), self.token.encode())

    async def _ping(self, request: Request) -> Response:
        return json_response({"ok": True, "admin_version": ADMIN_VERSION, "pid": os.getpid()})

    async def _status(self, request: Request) -> Response:
        return json_response(await collect_status(self.rt, self.agents))

    async def _stack(self, request: Request) -> Response:
        proc_id = request.query.get("proc", "")
        addr = find_proc(self.rt, proc_id)
        if addr is None:
            return json_response(
                {"proc": proc_id, "error": f"no proc {proc_id!r} in this job"}, 404
            )
        if self.rt.router.dead_reason(addr):
            return json_response(
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
                res = await call_within(self.agents.agents([addr])[addr].stack.call_one(), 15.0)
            except Exception as exc:
                res = {"pid": None, "error": f"{type(exc).__name__}: {exc}"}
        return json_response({"proc": proc_id, **res})

    async def _exec(self, request: Request) -> Response:
        try:
            body = request.json()
        except ValueError:
            return json_response(
                {"error": 'the body must be JSON: {"code": "..."} or {"argv": [...]}'}, 400
            )
        if not isinstance(body, dict):
            return json_response({"error": "the body must be a JSON object"}, 400)
        code, argv = body.get("code"), body.get("argv")
        timeout_s = body.get("timeout_s", EXEC_TIMEOUT_S)
        if (code is None) == (argv is None):
            return json_response(
                {"error": 'give exactly one of "code" (Python source) or "argv" (a command)'}, 400
            )
        if code is not None and not isinstance(code, str):
            return json_response({"error": '"code" must be a string'}, 400)
        if argv is not None and (
            not isinstance(argv, list) or not argv or not all(isinstance(x, str) for x in argv)
        ):
            return json_response({"error": '"argv" must be a non-empty list of strings'}, 400)
        if (
            not isinstance(timeout_s, (int, float))
            or isinstance(timeout_s, bool)
            or not 0 < timeout_s <= EXEC_MAX_TIMEOUT_S
        ):
            return json_response(
                {"error": f'"timeout_s" must be a number of seconds in (0, {EXEC_MAX_TIMEOUT_S}]'},
                400,
            )
        return json_response(
            {"results": await exec_all(self.rt, self.agents, code, argv, float(timeout_s))}
        )

    async def _env(self, request: Request) -> Response:
        return json_response(
            {"results": await env_all(self.rt, self.agents, request.query.get("prefix", ""))}
        )

    async def _dashboard(self, request: Request) -> Response:
        import importlib.resources

        try:
            page = (importlib.resources.files("monarch.tools") / "dashboard.html").read_text()
        except (OSError, ModuleNotFoundError):
            return Response(
                404,
                b"the dashboard is not installed (monarch/tools/dashboard.html)",
                "text/plain; charset=utf-8",
            )
        return Response(200, page.encode(), "text/html; charset=utf-8")

    def close(self) -> None:
        """Stop serving and remove ``admin.json`` (any thread)."""
        self._closed = True
        with contextlib.suppress(RuntimeError):
            self.rt.loop.call_soon_threadsafe(self._disarm)
        with contextlib.suppress(OSError):
            os.unlink(self.path)
