"""``monarch status``'s fast path: the text renderer, the lean HTTP client, the argument parser,
and that the command imports neither typer nor rich (issue 14: < 200 ms; see
``monarch.tools.fast_status``)."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import threading
from typing import Any

import pytest
from monarch.tools.admin_client import AdminClient, AdminInfo, AdminRequestError, http_request
from monarch.tools.fast_status import parse_status_args, run_status
from monarch.tools.status_text import render_status

from tests.tools.conftest import RunningMesh


def _doc(**proc: Any) -> dict[str, Any]:
    p = {
        "id": "procs/0",
        "mesh": "procs",
        "rank": 0,
        "pid": 42,
        "status": "running",
        "failure": None,
        "actors": [
            {
                "id": "trainer-abc[0]",
                "class": "train.Trainer",
                "rank": 0,
                "status": "running",
                "queue_depth": 3,
                "messages_handled": 1200,
                "last_endpoint": "step",
                "failures": 0,
                "system": False,
            },
            {
                "id": "monarch_admin-1[0]",
                "class": "monarch._mesh.admin_agent.AdminAgent",
                "rank": 0,
                "status": "running",
                "queue_depth": 0,
                "messages_handled": 1,
                "last_endpoint": None,
                "failures": 0,
                "system": True,
            },
        ],
        **proc,
    }
    return {
        "client": {"pid": 7, "argv": ["train.py", "--steps", "9"]},
        "collect_ms": 1.25,
        "hosts": [{"hostname": "h0", "procs": [p]}],
        "meshes": [
            {"name": "procs", "kind": "proc", "extent": {"gpus": 1}, "alive": 1, "size": 1},
            {
                "name": "monarch_admin",
                "kind": "actor",
                "extent": {"gpus": 1},
                "alive": 1,
                "size": 1,
                "system": True,
            },
        ],
    }


def test_render_status_shows_the_tree_and_full_names_without_colour() -> None:
    text = render_status(_doc())
    lines = text.splitlines()
    assert lines[0] == "client pid 7  train.py --steps 9  (collected in 1.2 ms)"
    assert lines[1] == "└── host h0"
    assert lines[2] == "    └── proc procs/0 (mesh procs rank 0) pid 42 running"
    header, row = lines[3].split(), lines[4].split()
    assert header[:3] == ["actor", "class", "rank"]
    assert row == ["trainer-abc[0]", "train.Trainer", "0", "running", "3", "1200", "step", "0"]
    assert "monarch_admin" not in text and "\x1b[" not in text
    assert lines[-2].split() == ["name", "kind", "extent", "alive"]
    assert lines[-1].split() == ["procs", "proc", '{"gpus":', "1}", "1/1"]
    assert "not listed" not in text


def test_render_status_says_how_many_old_failed_procs_were_left_out() -> None:
    doc = {**_doc(), "failed_procs_omitted": 3}
    assert "(3 older failed procs of failed meshes not listed;" in render_status(doc)


def test_render_status_system_lists_the_runtime_actors_and_failures_in_red() -> None:
    text = render_status(
        _doc(status="failed", failure="proc procs/0 died: SIGKILL\n  more"),
        system=True,
        colour=True,
    )
    assert "monarch_admin-1[0]" in text and "monarch_admin " in text
    assert "\x1b[31mfailed\x1b[0m" in text
    assert "\x1b[31mproc procs/0 died: SIGKILL\x1b[0m" in text and "\x1b[31m  more\x1b[0m" in text


@pytest.mark.parametrize(
    "args, parsed",
    [
        ([], (None, False, False)),
        (["--json", "--system"], (None, True, True)),
        (["--pid", "12"], (12, False, False)),
        (["--pid=12", "--json"], (12, True, False)),
        (["--help"], None),
        (["--pid"], None),
        (["--pid", "x"], None),
        (["--jsn"], None),
    ],
)
def test_parse_status_args_knows_the_typer_commands_options_only(
    args: list[str], parsed: Any
) -> None:
    assert parse_status_args(args) == parsed


def test_run_status_leaves_other_command_lines_to_typer() -> None:
    assert run_status(["env"]) is None
    assert run_status([]) is None
    assert run_status(["status", "--help"]) is None


class _OneShotServer:
    """A socket server answering one request with ``answer`` (bytes), keeping what it got."""

    def __init__(self, answer: bytes) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.answer = answer
        self.got = b""
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        with conn:
            conn.settimeout(10)
            while b"\r\n\r\n" not in self.got:
                self.got += conn.recv(4096)
            head, _, body = self.got.partition(b"\r\n\r\n")
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    while len(body) < int(line.split(b":")[1]):
                        body += conn.recv(4096)
            self.got = head + b"\r\n\r\n" + body
            conn.sendall(self.answer)
        self.sock.close()

    def close(self) -> None:
        self.thread.join(10)
        assert not self.thread.is_alive()


def test_http_request_sends_the_body_and_decodes_a_chunked_answer() -> None:
    srv = _OneShotServer(
        b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{"a\r\n5\r\n": 1}\r\n0\r\n\r\n'
    )
    status, body = http_request(srv.url, "POST", "/v1/x?q=1", b'{"k": 2}', {"X-T": "v"}, 10.0)
    srv.close()
    assert (status, json.loads(body)) == (200, {"a": 1})
    assert srv.got.startswith(b"POST /v1/x?q=1 HTTP/1.1\r\n")
    assert b"\r\nX-T: v\r\n" in srv.got and b"Content-Length: 8\r\n" in srv.got
    assert srv.got.endswith(b'\r\n\r\n{"k": 2}')


def test_admin_client_turns_an_http_error_into_admin_request_error_with_its_message() -> None:
    body = b'{"error": "no proc"}'
    srv = _OneShotServer(
        b"HTTP/1.1 404 Not Found\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    client = AdminClient(AdminInfo(srv.url, "t", 1, [], 0.0, "-"), timeout_s=10.0)
    with pytest.raises(AdminRequestError, match="HTTP 404: no proc") as err:
        client.stack("p/0")
    srv.close()
    assert err.value.status == 404
    assert srv.got.startswith(b"GET /v1/stack?proc=p%2F0 HTTP/1.1\r\n")
    assert b"Authorization: Bearer t\r\n" in srv.got


def test_admin_client_says_when_nothing_listens() -> None:
    sock = socket.create_server(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    sock.close()
    client = AdminClient(AdminInfo(url, "t", 1, [], 0.0, "-"), timeout_s=5.0)
    with pytest.raises(AdminRequestError, match="cannot reach the client"):
        client.status()


def test_monarch_status_imports_neither_typer_nor_rich(running_mesh: RunningMesh) -> None:
    code = (
        "import sys, io\n"
        "from monarch.cli import main\n"
        "sys.argv = ['monarch', 'status']\n"
        "out, sys.stdout = sys.stdout, io.StringIO()\n"
        "try:\n"
        "    main()\n"
        "except SystemExit as e:\n"
        "    rc = e.code\n"
        "text, sys.stdout = sys.stdout.getvalue(), out\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('typer', 'rich', 'pydantic', 'aiohttp'))\n"
        "print(rc, heavy, 'workers' in text)\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code],
        env=running_mesh.env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["0", "[]", "True"]


def test_fast_and_typer_paths_print_the_same_status(
    running_mesh: RunningMesh, monkeypatch: pytest.MonkeyPatch
) -> None:
    from monarch.cli import app
    from typer.testing import CliRunner

    monkeypatch.setenv("MONARCH_ADMIN_FILE", running_mesh.admin_file)
    out = io.StringIO()
    assert run_status(["status", "--json"], out=out) == 0
    doc = json.loads(out.getvalue())
    assert doc["client"]["pid"] == os.getpid()
    # the same document for both paths (the counters move between two real requests)
    monkeypatch.setattr(AdminClient, "status", lambda self: doc)
    out = io.StringIO()
    assert run_status(["status"], out=out) == 0
    typer_run = CliRunner().invoke(app, ["status"])
    assert typer_run.exit_code == 0, typer_run.output
    assert out.getvalue() == typer_run.output == render_status(doc)
    assert "workers" in out.getvalue()
