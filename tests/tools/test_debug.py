"""``monarch debug`` on real procs, driven through a real pty (pexpect).

The client script (tests/tools/debug_client.py) runs in its own process on a 4-proc mesh: ranks 1
and 2 of ``dbg`` pause in a sync endpoint, rank 3 of ``adbg`` in an async one, while rank 0 keeps
answering. ``monarch debug`` lists them, attaches to rank 1 (p, assignment, n, l, up, detach),
casts to several ranks and continues them all; the endpoint results show pdb's change.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import threading
from pathlib import Path

import pexpect
import pytest
from monarch.tools import debug_wire
from monarch.tools.debug_server import parse_ranks

from tests.tools.conftest import free_port

HERE = Path(__file__).parent
_LINES = (HERE / "debug_client.py").read_text().splitlines()
# where pdb stops: the line after each breakpoint() call (1-based), the sync one first
SYNC_STOP, ASYNC_STOP = (i + 2 for i, line in enumerate(_LINES) if line.strip() == "breakpoint()")
TIMEOUT = 120  # seconds for any one expect (4 procs start, on a shared 2-core machine)


def _client(
    tmp_path: Path, children: list[pexpect.spawn], port: int, **extra: str
) -> pexpect.spawn:
    script = tmp_path / "client.py"
    shutil.copy(HERE / "debug_client.py", script)
    env = dict(os.environ, MONARCH_DEBUG_SERVER_PORT=str(port), **extra)
    env.pop("PYTHONBREAKPOINT", None) if "PYTHONBREAKPOINT" not in extra else None
    child = pexpect.spawn(
        sys.executable, [str(script)], cwd=str(tmp_path), env=env, encoding="utf-8", timeout=TIMEOUT
    )
    children.append(child)
    return child


def test_parse_ranks_follows_monarch_syntax() -> None:
    assert parse_ranks("1") == 1
    assert parse_ranks("0,1,3") == [0, 1, 3]
    assert parse_ranks("0:3") == range(0, 3)
    assert parse_ranks("1::2") == range(1, sys.maxsize, 2)
    assert parse_ranks("gpus=1:3, hosts=(0,2), x=4") == {
        "gpus": range(1, 3),
        "hosts": [0, 2],
        "x": 4,
    }
    for bad in ("", "a", "1,,2", "gpus=", "gpus=1 junk"):
        with pytest.raises(ValueError):
            parse_ranks(bad)


def test_login_refuses_wrong_secret_and_oversized_frames() -> None:
    a, b = socket.socketpair()
    with a, b:
        b.settimeout(10)
        errors: list[BaseException] = []

        def serve() -> None:
            try:
                debug_wire.welcome(a, [b"right"], "cli")
            except debug_wire.DebugWireError as exc:
                errors.append(exc)
                a.shutdown(socket.SHUT_RDWR)  # as the server does: a failed login is hung up on

        t = threading.Thread(target=serve)
        t.start()
        with pytest.raises((debug_wire.DebugWireError, ConnectionError)):
            debug_wire.login(b, b"wrong", "cli")
        t.join(10)
        assert errors and "failed the login" in str(errors[0])
    a, b = socket.socketpair()
    with a, b:
        b.sendall((1 << 30).to_bytes(4, "big"))
        with pytest.raises(debug_wire.DebugWireError, match="refused"):
            debug_wire.recv(a, 4096)


def test_debug_session_on_four_procs(tmp_path: Path, spawned: list[pexpect.spawn]) -> None:
    port = free_port()
    client = _client(tmp_path, spawned, port)
    paused = set()
    pinged = False
    while len(paused) < 3 or not pinged:  # in any order
        i = client.expect([r"PING0 0", r"monarch debug: (\w+) rank (\d) paused at (\S+):(\d+)"])
        if i == 0:
            pinged = True  # rank 0 answers while ranks 1 and 2 are paused (or about to be)
            continue
        paused.add((client.match.group(1), int(client.match.group(2))))
        assert client.match.group(3) == str(tmp_path / "client.py")
    assert paused == {("dbg", 1), ("dbg", 2), ("adbg", 3)}

    env = dict(os.environ, COLUMNS="160")
    cli = pexpect.spawn(
        sys.executable,
        ["-m", "monarch.cli", "debug", "--port", str(port)],
        env=env,
        encoding="utf-8",
        timeout=TIMEOUT,
    )
    spawned.append(cli)
    cli.expect_exact("monarch_dbg> ")
    cli.sendline("list")
    for actor, rank, fn, line in (
        ("adbg", 3, "awork", ASYNC_STOP),
        ("dbg", 1, "work", SYNC_STOP),
        ("dbg", 2, "work", SYNC_STOP),
    ):
        cli.expect(
            rf"{actor}\s+│ {rank}\s+│ {{'gpus': {rank}}}\s+│ \S+\s+│ {fn}\s+│ \S*client\.py:{line}"
        )
    cli.expect_exact("monarch_dbg> ")

    cli.sendline("attach dbg 1")
    cli.expect_exact("-> y = y * 2")
    cli.expect_exact("(Pdb) ")
    cli.sendline("p y")
    cli.expect(r"\r\n6\r\n")
    cli.expect_exact("(Pdb) ")
    cli.sendline("y = 100")
    cli.expect_exact("(Pdb) ")
    cli.sendline("n")
    cli.expect_exact("-> return y")
    cli.expect_exact("(Pdb) ")
    cli.sendline("l")  # the client deleted its script: these lines came from the client
    cli.expect(rf"{SYNC_STOP - 1}\s+breakpoint\(\)")
    cli.expect(rf"{SYNC_STOP + 1}\s+->\s+return y")
    cli.expect_exact("(Pdb) ")
    cli.sendline("up")
    cli.expect(r"instance\.py\(\d+\)")
    cli.expect_exact("(Pdb) ")
    cli.sendline("down")
    cli.expect_exact("(Pdb) ")
    cli.sendline("detach")
    cli.expect_exact("Detached from debug session for dbg 1")
    cli.expect_exact("monarch_dbg> ")

    cli.sendline("cast dbg ranks(1,2) p self.x")
    cli.expect(r"=== dbg rank 1 ===\r\n10\r\n=== dbg rank 2 ===\r\n20\r\n")
    cli.expect_exact("monarch_dbg> ")
    cli.sendline("cast adbg ranks(gpus=3) p z")
    cli.expect(r"=== adbg rank 3 ===\r\n21\r\n")
    cli.expect_exact("monarch_dbg> ")
    cli.sendline("help")
    cli.expect_exact("detach")
    cli.expect_exact("monarch_dbg> ")

    cli.sendline("continue")
    cli.expect_exact("continued 3 paused rank(s)")
    cli.expect_exact("monarch_dbg> ")
    client.expect(r"RESULTS \[12, 12, 12, 200\]")  # rank 1 returned 2 * the y set in pdb
    client.expect(r"ARESULTS \[21, 21, 21, 21\]")
    client.expect(pexpect.EOF)
    client.close()
    assert client.exitstatus == 0
    cli.sendline("list")  # the client has ended: so has its debug server
    cli.expect_exact("the debug server closed the connection")
    cli.expect(pexpect.EOF)


def test_quit_leaves_sessions_in_place(tmp_path: Path, spawned: list[pexpect.spawn]) -> None:
    port = free_port()
    client = _client(tmp_path, spawned, port)
    client.expect(r"adbg rank 3 paused at")
    cli = pexpect.spawn(
        sys.executable,
        ["-m", "monarch.cli", "debug", "--port", str(port)],
        encoding="utf-8",
        timeout=TIMEOUT,
    )
    spawned.append(cli)
    cli.expect_exact("monarch_dbg> ")
    cli.sendline("attach nosuch 0")
    cli.expect_exact("no paused rank 0 of 'nosuch'")
    cli.expect_exact("monarch_dbg> ")
    cli.sendline("cast dbg ranks(1,,2) p 1")
    cli.expect_exact("Error processing command: bad rank selection")
    cli.expect_exact("monarch_dbg> ")
    cli.sendline("quit")
    cli.expect(pexpect.EOF)
    cli = pexpect.spawn(
        sys.executable,
        ["-m", "monarch.cli", "debug", "--port", str(port)],
        encoding="utf-8",
        timeout=TIMEOUT,
    )
    spawned.append(cli)
    cli.expect_exact("monarch_dbg> ")
    cli.sendline("attach adbg 3")  # still paused after the first debugger quit
    cli.expect_exact("(Pdb) ")
    cli.sendline("p n")
    cli.expect(r"\r\n7\r\n")
    cli.sendline("c")  # pdb's own continue ends this session
    cli.expect_exact("Debug session for adbg 3 ended")
    cli.expect_exact("monarch_dbg> ")
    cli.sendline("continue")
    cli.expect(r"continued \d paused rank\(s\)")
    client.expect(r"ARESULTS \[21, 21, 21, 21\]")
    client.expect(pexpect.EOF)


def test_post_mortem_on_an_endpoint_exception(tmp_path: Path, spawned: list[pexpect.spawn]) -> None:
    port = free_port()
    client = _client(
        tmp_path, spawned, port, DEBUG_TEST_POST_MORTEM="1", MONARCH_DEBUG_POST_MORTEM="1"
    )
    client.expect(r"dbg rank 2 post-mortem at \S+client\.py:\d+")
    cli = pexpect.spawn(
        sys.executable,
        ["-m", "monarch.cli", "debug", "--port", str(port)],
        encoding="utf-8",
        timeout=TIMEOUT,
    )
    spawned.append(cli)
    cli.expect_exact("monarch_dbg> ")
    cli.sendline("attach dbg 2")
    cli.expect_exact("post-mortem: ZeroDivisionError: division by zero")
    cli.expect_exact("-> return 1 / d")
    cli.expect_exact("(Pdb) ")
    cli.sendline("p d")
    cli.expect(r"\r\n0\r\n")
    cli.expect_exact("(Pdb) ")
    cli.sendline("c")
    cli.expect_exact("Debug session for dbg 2 ended")
    client.expect(r"RAISED \w+")  # the caller still gets the endpoint's failure
    client.expect(pexpect.EOF)
