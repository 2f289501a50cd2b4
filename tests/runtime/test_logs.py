"""Log forwarding on real procs: a client script runs as its own process and its stdout/stderr are
read here (the procs' lines reach the client's own streams, prefixed, folded, in order)."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

CLIENT_TIMEOUT_S = 120.0

PRELUDE = """
import ctypes, faulthandler, logging, os, sys
from monarch.actor import Actor, endpoint, this_host

class Printer(Actor):
    @endpoint
    def say(self, text: str) -> int:
        print(text)
        return os.getpid()

    @endpoint
    def loss(self, rank: int) -> None:
        print(f"loss 0.{rank}23")

    @endpoint
    def log(self, level: int, text: str) -> None:
        logging.getLogger().log(level, text)

    @endpoint
    def abort(self, how: str) -> None:
        print("last words before the crash", flush=True)
        if how == "abort":
            os.abort()
        ctypes.string_at(0)  # SIGSEGV: faulthandler's dump goes to the log file

pm = this_host().spawn_procs(per_host={"gpus": 4})
m = pm.spawn("printer", Printer)
"""


def _run(tmp_path: Path, body: str, *, ok: bool = True) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "client.py"
    script.write_text(PRELUDE + textwrap.dedent(body))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MONARCH_")}
    env["MONARCH_LOG_DIR"] = str(tmp_path / "logs")
    proc = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=CLIENT_TIMEOUT_S,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0 or not ok, proc.stdout + proc.stderr
    return proc


def test_four_ranks_output_reaches_the_client_prefixed_with_host_rank_pid(tmp_path: Path) -> None:
    out = _run(
        tmp_path,
        """
        pids = [m.slice(gpus=r).say.call_one(f"hello from rank {r}").get(30) for r in range(4)]
        print("PIDS", *pids)
        pm.stop().get(30)
        """,
    ).stdout
    pids = re.search(r"^PIDS (.*)$", out, re.M)
    assert pids, out
    host = socket.gethostname()
    for r, pid in enumerate(pids.group(1).split()):
        assert f"[{host} rank={r} pid={pid}] hello from rank {r}\n" in out, out
    # and each proc's log file on this host holds its own line
    files = sorted((tmp_path / "logs").glob("*.log"))
    assert len(files) == 4
    assert sorted(f.read_text().strip() for f in files) == [
        f"hello from rank {r}" for r in range(4)
    ]


def test_aggregation_folds_similar_lines_with_count_and_ranks(tmp_path: Path) -> None:
    out = _run(
        tmp_path,
        """
        import asyncio
        asyncio.run(pm.logging_option(stream_to_client=True, aggregate_window_sec=60))
        m.loss.call(0).get(30)  # every rank prints "loss 0.<r>23": one fold
        m.slice(gpus=2).say.call_one("only rank 2 says this").get(30)
        pm.stop().get(30)
        print("END")  # stop() printed the fold, before its window ended
        """,
    ).stdout
    host = socket.gethostname()
    folds = re.findall(r"^\[(\d+) similar log lines, ranks? ([^\]]*)\] (.*)$", out, re.M)
    assert (str(4), f"0-3 on {host}") in [(c, w) for c, w, _ in folds], out
    (loss,) = [t for c, w, t in folds if c == "4"]
    assert re.fullmatch(r"loss 0\.[0-3]23", loss), loss
    assert ("1", f"2 on {host}", "only rank 2 says this") in folds, out
    assert not re.search(r"^\[\S+ rank=\d pid=\d+\] loss", out, re.M), (
        out
    )  # folded, not also printed


def test_output_printed_before_return_arrives_before_the_result(tmp_path: Path) -> None:
    out = _run(
        tmp_path,
        """
        for i in range(200):
            m.slice(gpus=i % 4).say.call_one(f"line {i}").get(30)
            print(f"RESULT {i}", flush=True)
        pm.stop().get(30)
        """,
    ).stdout
    lines = out.splitlines()
    order = {ln.split("] ", 1)[-1]: k for k, ln in enumerate(lines)}
    for i in range(200):
        assert order[f"line {i}"] < order[f"RESULT {i}"], out


@pytest.mark.parametrize("how", ["abort", "segfault"])
def test_a_crashed_proc_keeps_its_last_lines_and_its_failure_names_the_log_file(
    tmp_path: Path, how: str
) -> None:
    res = _run(
        tmp_path,
        f"""
        try:
            m.slice(gpus=1).abort.call_one({how!r}).get(30)
        except Exception as exc:
            print("ERROR", str(exc).replace("\\n", " | "))
        pm.stop().get(30)
        """,
        ok=False,  # the client ends with status 1: its proc failed (unhandled actor failure)
    )
    err = re.search(r"^ERROR (.*)$", res.stdout, re.M)
    assert err, res.stdout + res.stderr
    path = re.search(r"log file (\S+?\.log)", err.group(1))
    assert path, err.group(1)
    text = Path(path.group(1)).read_text()
    assert "last words before the crash" in text
    assert "last words before the crash" in err.group(1)  # quoted in the failure
    if how == "segfault":
        assert "Fatal Python error: Segmentation fault" in text, text
        assert "Fatal Python error: Segmentation fault" in err.group(1)
    # (the streamed copy of that line may die with the proc, queued: the failure quotes the file)


def test_log_records_are_forwarded_at_the_chosen_level(tmp_path: Path) -> None:
    res = _run(
        tmp_path,
        """
        import asyncio
        asyncio.run(pm.logging_option(aggregate_window_sec=None, level=logging.ERROR))
        r0 = m.slice(gpus=0)
        r0.log.call_one(logging.WARNING, "warning hidden at ERROR").get(30)
        r0.log.call_one(logging.ERROR, "error shown at ERROR").get(30)
        asyncio.run(pm.logging_option(aggregate_window_sec=None, level=logging.WARNING))
        r0.log.call_one(logging.WARNING, "warning shown at WARNING").get(30)
        r0.say.call_one("prints are not filtered").get(30)
        pm.stop().get(30)
        """,
    )
    assert "error shown at ERROR" in res.stderr
    assert "warning shown at WARNING" in res.stderr
    assert "warning hidden at ERROR" not in res.stderr + res.stdout
    assert re.search(r"rank=0 pid=\d+\] prints are not filtered", res.stdout), res.stdout
    (rank0,) = [
        f for f in (tmp_path / "logs").glob("*.log") if "prints are not filtered" in f.read_text()
    ]
    # the level is the procs' logger level (Monarch's): a record below it is not emitted at all
    assert "warning hidden at ERROR" not in rank0.read_text()
    assert "warning shown at WARNING" in rank0.read_text()


def test_logging_option_level_info_lets_info_records_through(tmp_path: Path) -> None:
    res = _run(
        tmp_path,
        """
        import asyncio
        r0 = m.slice(gpus=0)
        r0.log.call_one(logging.INFO, "info before logging_option").get(30)
        asyncio.run(pm.logging_option(aggregate_window_sec=None, level=logging.INFO))
        r0.log.call_one(logging.INFO, "info after logging_option").get(30)
        pm.stop().get(30)
        """,
    )
    assert "info after logging_option" in res.stderr, res.stderr
    assert "info before logging_option" not in res.stderr  # the procs' default level is WARNING


def test_logging_option_rejects_bad_arguments(tmp_path: Path) -> None:
    out = _run(
        tmp_path,
        """
        import asyncio
        for kw in ({"level": 300}, {"aggregate_window_sec": -1}, {"level": "INFO"}):
            try:
                asyncio.run(pm.logging_option(**kw))
            except (ValueError, TypeError) as exc:
                print("REFUSED", type(exc).__name__, exc)
        pm.stop().get(30)
        """,
    ).stdout
    assert out.count("REFUSED") == 3, out
    assert "REFUSED ValueError Invalid logging level: 300" in out
