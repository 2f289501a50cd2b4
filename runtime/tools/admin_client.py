"""Finding a running client's admin endpoint and calling it (what ``monarch status``, ``exec``,
``env``, ``top`` and the dashboard use).

Discovery: ``MONARCH_ADMIN_FILE`` (the path of an ``admin.json``) when set; else the
``monarch-<pid>-*/admin.json`` files in the temp folder whose pid is alive and owned by this
user, the newest first (``pid=`` picks one). Requests are plain HTTP/1.1 JSON to 127.0.0.1 with
``Authorization: Bearer <token>``, one connection each, written over a stdlib socket: ``urllib``
and ``http.client`` would import ``ssl``, ``email`` and more, and ``monarch status`` is timed
from the process's start.
"""

from __future__ import annotations

import glob
import json
import os
import socket
import tempfile
from dataclasses import dataclass, field
from typing import Any

from .._core.errors import MonarchError

__all__ = [
    "ADMIN_FILE_ENV",
    "AdminClient",
    "AdminInfo",
    "AdminNotFound",
    "AdminRequestError",
    "find_admin",
]

#: the environment variable naming a client's ``admin.json``
ADMIN_FILE_ENV = "MONARCH_ADMIN_FILE"


class AdminNotFound(MonarchError):
    """No running client's admin endpoint was found."""


class AdminRequestError(MonarchError):
    """The admin endpoint could not be reached or refused the request (``status``: HTTP code)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class AdminInfo:
    """The contents of one ``admin.json``."""

    url: str
    token: str = field(repr=False)
    pid: int
    argv: list[str]
    started_at: float
    path: str

    @classmethod
    def load(cls, path: str) -> AdminInfo:
        """Read ``path``.

        Raises:
            AdminNotFound: it cannot be read or is not an admin file.
        """
        try:
            with open(path) as f:
                doc = json.load(f)
            return cls(
                str(doc["url"]),
                str(doc["token"]),
                int(doc["pid"]),
                list(doc.get("argv", [])),
                float(doc.get("started_at", 0)),
                path,
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise AdminNotFound(f"cannot read the admin file {path}: {exc}") from exc


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False  # another user's process
    return True


def find_admin(pid: int | None = None) -> AdminInfo:
    """The admin endpoint of a running client (see the module docstring).

    Args:
        pid: the client's process id; None: the newest running client.

    Raises:
        AdminNotFound: none found (or not the one with ``pid``).
    """
    env = os.environ.get(ADMIN_FILE_ENV)
    if env:
        info = AdminInfo.load(env)
        if pid is not None and info.pid != pid:
            raise AdminNotFound(
                f"{ADMIN_FILE_ENV}={env} is the client with pid {info.pid}, not {pid}"
            )
        return info
    uid = os.getuid()
    found: list[AdminInfo] = []
    pattern = os.path.join(
        tempfile.gettempdir(), f"monarch-{pid if pid is not None else '[0-9]*'}-*", "admin.json"
    )
    for path in glob.glob(pattern):
        try:
            if os.stat(path).st_uid != uid:
                continue
            info = AdminInfo.load(path)
        except (OSError, AdminNotFound):
            continue
        if _alive(info.pid):
            found.append(info)
    if not found:
        which = f"with pid {pid}" if pid is not None else "of this user"
        raise AdminNotFound(
            f"no running Monarch client {which} found (looked for {pattern}; set {ADMIN_FILE_ENV} to a client's admin.json, "
            "and check that the client did not set MONARCH_ADMIN=0)"
        )
    return max(found, key=lambda i: i.started_at)


def _quote(value: str) -> str:
    """``value`` percent-encoded for a query string (RFC 3986 unreserved characters kept)."""
    keep = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~"
    return "".join(ch if ch in keep else "".join(f"%{b:02X}" for b in ch.encode()) for ch in value)


def http_request(
    url: str,
    method: str,
    path: str,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    timeout_s: float = 30.0,
) -> tuple[int, bytes]:
    """One HTTP/1.1 request on a fresh connection (``Connection: close``) to ``url``
    (``http://HOST:PORT``, as in ``admin.json``).

    Args:
        url: the server; only plain ``http://`` with a host and a port.
        method: ``GET``, ``POST``, ...
        path: the request target, with its query string.
        body: the request body (sent with its ``Content-Length``).
        headers: more request headers.
        timeout_s: the limit of each socket operation, seconds.

    Returns:
        ``(status code, body)``; a chunked body is decoded.

    Raises:
        ValueError: ``url`` is not ``http://HOST:PORT``.
        OSError: cannot connect, times out (``TimeoutError``), or the answer is not HTTP.
    """
    scheme, _, hostport = url.partition("://")
    host, _, port = hostport.rstrip("/").rpartition(":")
    if scheme != "http" or not host or not port.isdigit():
        raise ValueError(f"not an http://HOST:PORT address: {url!r}")
    head = [f"{method} {path} HTTP/1.1", f"Host: {hostport}", "Connection: close"]
    head += [f"{k}: {v}" for k, v in (headers or {}).items()]
    head.append(f"Content-Length: {len(body)}")
    request = ("\r\n".join(head) + "\r\n\r\n").encode() + body
    with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s) as sock:
        sock.sendall(request)
        chunks: list[bytes] = []
        while True:
            chunk = sock.recv(1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
    raw = b"".join(chunks)
    header, sep, payload = raw.partition(b"\r\n\r\n")
    lines = header.split(b"\r\n")
    parts = lines[0].split(None, 2)
    if not sep or len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        raise OSError(f"not an HTTP answer from {url}: {raw[:80]!r}")
    fields: dict[bytes, bytes] = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        fields[name.strip().lower()] = value.strip()
    try:
        if fields.get(b"transfer-encoding", b"").lower() == b"chunked":
            payload = _dechunk(payload)
        elif b"content-length" in fields:
            payload = payload[: int(fields[b"content-length"])]
    except ValueError as exc:
        raise OSError(f"a malformed HTTP answer from {url}: {exc}") from exc
    return int(parts[1]), payload


def _dechunk(data: bytes) -> bytes:
    out: list[bytes] = []
    while True:
        size_line, _, rest = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            return b"".join(out)
        out.append(rest[:size])
        data = rest[size + 2 :]


class AdminClient:
    """Calls one client's admin endpoint.

    Args:
        info: where it is (see :func:`find_admin`).
        timeout_s: per-request limit, seconds.
    """

    def __init__(self, info: AdminInfo, timeout_s: float = 30.0) -> None:
        self.info = info
        self.timeout_s = timeout_s

    def __repr__(self) -> str:
        return f"<AdminClient {self.info.url} pid={self.info.pid}>"

    def request(
        self, method: str, path: str, body: Any = None, *, timeout_s: float | None = None
    ) -> Any:
        """One request; returns the decoded JSON answer.

        Raises:
            AdminRequestError: not reachable, or an HTTP error (its JSON ``error`` as message).
        """
        data = json.dumps(body).encode() if body is not None else b""
        headers = {"Authorization": f"Bearer {self.info.token}"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        try:
            status, payload = http_request(
                self.info.url, method, path, data, headers, timeout_s or self.timeout_s
            )
        except OSError as exc:
            raise AdminRequestError(
                f"cannot reach the client (pid {self.info.pid}) at {self.info.url}: {exc}"
            ) from exc
        try:
            doc = json.loads(payload)
        except ValueError:
            doc = None
        if status != 200:
            msg = doc.get("error") if isinstance(doc, dict) else None
            raise AdminRequestError(
                f"{method} {path}: HTTP {status}: {msg or payload[:200].decode(errors='replace')}",
                status,
            )
        if doc is None:
            raise AdminRequestError(f"{method} {path}: the answer is not JSON")
        return doc

    def status(self) -> dict[str, Any]:
        """``GET /v1/status``: hosts, procs, actors, meshes (see docs/tools.md)."""
        return self.request("GET", "/v1/status")  # type: ignore[no-any-return]

    def stack(self, proc: str) -> dict[str, Any]:
        """``GET /v1/stack``: ``{"proc", "pid", "text"}`` or ``{"proc", "error"}``."""
        return self.request("GET", "/v1/stack?proc=" + _quote(proc))  # type: ignore[no-any-return]

    def exec(
        self, *, code: str | None = None, argv: list[str] | None = None, timeout_s: float = 30.0
    ) -> list[dict[str, Any]]:
        """``POST /v1/exec`` on every live proc; one result per proc, ordered by rank."""
        body: dict[str, Any] = {"timeout_s": timeout_s}
        if code is not None:
            body["code"] = code
        if argv is not None:
            body["argv"] = argv
        return self.request("POST", "/v1/exec", body, timeout_s=timeout_s + 10.0)["results"]  # type: ignore[no-any-return]

    def env(self, prefix: str = "") -> list[dict[str, Any]]:
        """``GET /v1/env``: every live proc's variables starting with ``prefix``."""
        doc = self.request("GET", "/v1/env?prefix=" + _quote(prefix))
        results: list[dict[str, Any]] = doc["results"]
        return results
