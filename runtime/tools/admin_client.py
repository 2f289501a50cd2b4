"""Finding a running client's admin endpoint and calling it (what ``monarch status``, ``exec``,
``env``, ``top`` and the dashboard use).

Discovery: ``MONARCH_ADMIN_FILE`` (the path of an ``admin.json``) when set; else the
``monarch-<pid>-*/admin.json`` files in the temp folder whose pid is alive and owned by this
user, the newest first (``pid=`` picks one). Requests are plain HTTP/JSON to 127.0.0.1 with
``Authorization: Bearer <token>`` (stdlib ``urllib``: the CLI stays quick to start).
"""

from __future__ import annotations

import glob
import json
import os
import tempfile
import urllib.error
import urllib.parse
import urllib.request
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
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            self.info.url + path,
            data=data,
            method=method,
            headers={
                "Authorization": f"Bearer {self.info.token}",
                "Content-Type": "application/json",
            },
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout_s or self.timeout_s) as resp:
                return json.load(resp)
        except urllib.error.HTTPError as exc:
            try:
                msg = json.load(exc).get("error", str(exc))
            except Exception:
                msg = str(exc)
            raise AdminRequestError(f"{method} {path}: HTTP {exc.code}: {msg}", exc.code) from exc
        except (urllib.error.URLError, OSError) as exc:
            raise AdminRequestError(
                f"cannot reach the client (pid {self.info.pid}) at {self.info.url}: {exc}"
            ) from exc

    def status(self) -> dict[str, Any]:
        """``GET /v1/status``: hosts, procs, actors, meshes (see docs/tools.md)."""
        return self.request("GET", "/v1/status")  # type: ignore[no-any-return]

    def stack(self, proc: str) -> dict[str, Any]:
        """``GET /v1/stack``: ``{"proc", "pid", "text"}`` or ``{"proc", "error"}``."""
        return self.request("GET", "/v1/stack?" + urllib.parse.urlencode({"proc": proc}))  # type: ignore[no-any-return]

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
        doc = self.request("GET", "/v1/env?" + urllib.parse.urlencode({"prefix": prefix}))
        results: list[dict[str, Any]] = doc["results"]
        return results
