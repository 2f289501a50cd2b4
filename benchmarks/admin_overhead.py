"""What the admin endpoint costs the message hot path (issue 14: no row more than 3% slower with
it on), and how long ``monarch status`` takes on a fresh client's first request against later
ones (issue 14: < 200 ms on a 64-actor mesh):
``python -m benchmarks.admin_overhead [--rounds N] [--quick] [--only a,b,status]``.

Each messaging workload of :mod:`benchmarks.workloads` runs in a fresh process, under our
interpreter, in three modes per round (order rotated every round, so drift hits all three):

- ``off``: ``MONARCH_ADMIN=0`` (no listener, no ``admin.json``);
- ``on``: the default (the endpoint listens; nobody asks);
- ``polled``: the default, and this orchestrator asks ``GET /v1/status`` once a second while the
  workload runs, as ``monarch top`` does (the client serves it on its event loop).

The actors' counters (``messages_handled``, ``last_endpoint``, ...) are always on: they cannot be
turned off, so every mode pays them. Per mode the table shows the median over rounds of each
process's median, and ``slower``: the median over rounds of how much worse that round's value is
than the same round's ``off`` (paired, so drift between rounds cancels; positive = slower; for a
rate, ``off/mode - 1``). This machine is small and shared: read a few percent as noise unless it
holds over several runs.

``status`` (in ``--only``, and run by default after the workloads): per round a fresh client
process (:func:`status_client`: 4 procs x 16 actors, each actor called once) runs the whole
``monarch status`` command as a child process, first before any other request reached its admin
endpoint, then :data:`LATER_REQUESTS` more times; wall time of each command from its start to
its exit. The table shows the median over rounds of the first request and of each round's median
later one, the median of per-round ratios first/later, and the same for ``collect_ms`` (the
client's own time to gather the document: on the first request it includes spawning the admin
agents). The CLI processes run while the client is idle, as a user's ``monarch status`` does.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks import _procs
from benchmarks.workloads import RESULT_PREFIX

REPO = Path(__file__).resolve().parent.parent
MODES = ("off", "on", "polled")
WORKLOADS = ("call_one", "calls_10k", "broadcast_10k", "call_4procs")
POLL_INTERVAL_S = 1.0
#: ``monarch status`` commands timed per fresh client after its first one
LATER_REQUESTS = 5
#: the status row's mesh: procs x actor meshes (one actor per proc each): 64 user actors
STATUS_PROCS, STATUS_MESHES = 4, 16


def _poll_status(token: str, stop: threading.Event, counts: list[int]) -> None:
    """Ask the workload's client (the process carrying ``token`` that has an admin file) for its
    status every :data:`POLL_INTERVAL_S` until ``stop``; counts the answers in ``counts[0]``."""
    from monarch.tools.admin_client import (
        AdminClient,
        AdminNotFound,
        AdminRequestError,
        find_admin,
    )

    client = None
    while not stop.is_set():
        if client is None:
            for pid in _procs.pids_with_token(token):
                try:
                    client = AdminClient(find_admin(pid), timeout_s=10.0)
                    break
                except AdminNotFound:
                    continue
            if client is None:
                stop.wait(0.05)  # the client runtime is not up yet
                continue
        try:
            client.status()
            counts[0] += 1
        except AdminRequestError:
            client = None  # gone (the workload ended) or not answering
        stop.wait(POLL_INTERVAL_S)


def run_one(name: str, mode: str, quick: bool, timeout_s: float) -> dict[str, Any]:
    """One workload process in ``mode``; its ``BENCH-RESULT`` document plus ``polls``.

    Raises:
        RuntimeError: the process failed, timed out or printed no result.
    """
    env = {k: v for k, v in os.environ.items() if k != "MONARCH_ADMIN"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    if mode == "off":
        env["MONARCH_ADMIN"] = "0"
    token = _procs.new_token()
    stop = threading.Event()
    counts = [0]
    poller = None
    if mode == "polled":
        poller = threading.Thread(target=_poll_status, args=(token, stop, counts), daemon=True)
        poller.start()
    cmd = [sys.executable, "-m", "benchmarks.workloads", name, "--json"] + (
        ["--quick"] if quick else []
    )
    try:
        done = _procs.run_isolated(cmd, env=env, cwd=str(REPO), timeout_s=timeout_s, token=token)
    finally:
        stop.set()
        if poller is not None:
            poller.join(15.0)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith(RESULT_PREFIX)]
    if done.timed_out or not lines:
        raise RuntimeError(
            f"{name} ({mode}): {'timed out' if done.timed_out else 'no result'}; "
            f"stderr: {done.stderr[-400:]}"
        )
    doc: dict[str, Any] = json.loads(lines[-1][len(RESULT_PREFIX) :])
    if "error" in doc:
        raise RuntimeError(f"{name} ({mode}): {doc['error']}")
    doc["polls"] = counts[0]
    return doc


def status_client(later: int) -> dict[str, Any]:
    """Run in a fresh client process: spawn the status row's mesh, then time ``monarch status``
    (``monarch.cli.main``, what the installed ``monarch`` script runs) once as the
    client's first admin request and ``later`` times after: seconds of wall time per command,
    and the ``collect_ms`` each document reports (the client's own time to gather it).

    Raises:
        RuntimeError: a ``monarch status`` command failed or listed the wrong actors.
    """
    import subprocess

    from monarch._mesh import current
    from monarch.actor import this_host

    from benchmarks._actors import Echo

    procs = this_host().spawn_procs(per_host={"gpus": STATUS_PROCS})
    try:
        meshes = [procs.spawn(f"echo{i}", Echo) for i in range(STATUS_MESHES)]
        for m in meshes:
            m.ping.call(0).get(60.0)
        rt = current.installed()
        if rt is None or rt.admin is None:
            raise RuntimeError("this client serves no admin endpoint (MONARCH_ADMIN=0?)")
        env = {**os.environ, "MONARCH_ADMIN_FILE": rt.admin.path}
        cmd = [sys.executable, "-c", "from monarch.cli import main; main()", "status", "--json"]
        times, collect_ms = [], []
        for _ in range(1 + later):
            t0 = time.perf_counter()
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60.0)
            times.append(time.perf_counter() - t0)
            if done.returncode != 0:
                raise RuntimeError(f"monarch status failed: {done.stderr[-400:]}")
            doc = json.loads(done.stdout)
            n = sum(not a["system"] for h in doc["hosts"] for p in h["procs"] for a in p["actors"])
            if n != STATUS_PROCS * STATUS_MESHES:
                raise RuntimeError(f"monarch status listed {n} user actors")
            collect_ms.append(float(doc["collect_ms"]))
        return {
            "first_s": times[0],
            "later_s": times[1:],
            "first_collect_ms": collect_ms[0],
            "later_collect_ms": collect_ms[1:],
        }
    finally:
        procs.stop().get(30.0)


def run_status_round(timeout_s: float) -> dict[str, Any]:
    """One fresh client running :func:`status_client`; its result document.

    Raises:
        RuntimeError: the process failed, timed out or printed no result.
    """
    env = {k: v for k, v in os.environ.items() if k not in ("MONARCH_ADMIN", "MONARCH_ADMIN_FILE")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    cmd = [sys.executable, "-m", "benchmarks.admin_overhead", "--status-client"]
    done = _procs.run_isolated(
        cmd, env=env, cwd=str(REPO), timeout_s=timeout_s, token=_procs.new_token()
    )
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith(RESULT_PREFIX)]
    if done.timed_out or not lines:
        raise RuntimeError(
            f"status: {'timed out' if done.timed_out else 'no result'}; stderr: {done.stderr[-400:]}"
        )
    doc: dict[str, Any] = json.loads(lines[-1][len(RESULT_PREFIX) :])
    if "error" in doc:
        raise RuntimeError(f"status: {doc['error']}")
    return doc


def _slower(better: str, base: float, value: float) -> float:
    return value / base - 1.0 if better == "lower" else base / value - 1.0


def _overhead_table(
    args: argparse.Namespace,
    values: dict[tuple[str, str], list[float]],
    meta: dict[str, tuple[str, str]],
    polls: list[int],
) -> dict[str, Any]:
    print()
    print(
        f"admin endpoint overhead: median of {args.rounds} rounds of per-process medians"
        f"{' (--quick)' if args.quick else ''}; 'slower': median of per-round ratios to"
        " MONARCH_ADMIN=0 (+ = slower);"
        f" polled: GET /v1/status every {POLL_INTERVAL_S:g} s ({min(polls, default=0)}-"
        f"{max(polls, default=0)} answers per process)"
    )
    header = f"{'metric':24s} {'unit':>4s} {'off':>11s} {'on':>11s} {'slower':>8s} {'polled':>11s} {'slower':>8s}"
    print(header)
    print("-" * len(header))
    table: dict[str, Any] = {}
    for metric_name, (unit, better) in meta.items():
        med = {mode: statistics.median(values[(metric_name, mode)]) for mode in MODES}
        base = values[(metric_name, "off")]
        on, polled = (
            statistics.median(
                _slower(better, b, v) for b, v in zip(base, values[(metric_name, mode)])
            )
            for mode in ("on", "polled")
        )
        print(
            f"{metric_name:24s} {unit:>4s} {med['off']:11.1f} {med['on']:11.1f} {on:+8.1%} "
            f"{med['polled']:11.1f} {polled:+8.1%}"
        )
        table[metric_name] = {
            "unit": unit,
            "better": better,
            "median": med,
            "slower_on": on,
            "slower_polled": polled,
            "rounds": {mode: values[(metric_name, mode)] for mode in MODES},
        }
    return table


def _status_table(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    first = [r["first_s"] * 1000.0 for r in rounds]
    later = [statistics.median(r["later_s"]) * 1000.0 for r in rounds]
    ratio = statistics.median(f / x for f, x in zip(first, later))
    print()
    print(
        f"monarch status --json, whole command, {STATUS_PROCS} procs x {STATUS_MESHES} actors:"
        f" median of {len(rounds)} fresh clients (later: each client's median of"
        f" {LATER_REQUESTS})"
    )
    header = f"{'request':24s} {'unit':>4s} {'median':>9s} {'min':>9s} {'max':>9s}"
    print(header)
    print("-" * len(header))
    for label, xs in (("first (fresh client)", first), ("later", later)):
        print(f"{label:24s} {'ms':>4s} {statistics.median(xs):9.1f} {min(xs):9.1f} {max(xs):9.1f}")
    print(f"{'first / later':24s} {'x':>4s} {ratio:9.2f}")
    c_first = [r["first_collect_ms"] for r in rounds]
    c_later = [statistics.median(r["later_collect_ms"]) for r in rounds]
    for label, xs in (("collect_ms first", c_first), ("collect_ms later", c_later)):
        print(f"{label:24s} {'ms':>4s} {statistics.median(xs):9.1f} {min(xs):9.1f} {max(xs):9.1f}")
    return {
        "unit": "ms",
        "first": first,
        "later": later,
        "first_over_later": ratio,
        "collect_ms_first": c_first,
        "collect_ms_later": c_later,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.admin_overhead")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="fewer iterations per process")
    parser.add_argument(
        "--only",
        default=",".join((*WORKLOADS, "status")),
        help="comma-separated workloads, and 'status' for the first/later status row",
    )
    parser.add_argument("--timeout-s", type=float, default=180.0, help="per workload process")
    parser.add_argument("--json", dest="json_path", default=None, help="also write every value")
    parser.add_argument("--status-client", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.status_client:  # one fresh client of the status row (run_status_round)
        try:
            result = status_client(LATER_REQUESTS)
        except Exception as exc:
            result = {"error": f"{type(exc).__name__}: {exc}"}
        print(RESULT_PREFIX + json.dumps(result), flush=True)
        return 0
    names = [n for n in args.only.split(",") if n]
    with_status = "status" in names
    names = [n for n in names if n != "status"]
    _procs.become_subreaper()
    # values[(metric name, mode)] -> one median per round; meta[metric name] -> (unit, better)
    values: dict[tuple[str, str], list[float]] = {}
    meta: dict[str, tuple[str, str]] = {}
    polls: list[int] = []
    status_rounds: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    for rnd in range(args.rounds):
        order = MODES[rnd % len(MODES) :] + MODES[: rnd % len(MODES)]
        if with_status:
            status_rounds.append(run_status_round(args.timeout_s))
        for name in names:
            for mode in order:
                doc = run_one(name, mode, args.quick, args.timeout_s)
                if mode == "polled":
                    polls.append(doc["polls"])
                for m in doc["metrics"]:
                    values.setdefault((m["name"], mode), []).append(float(m["value"]))
                    meta[m["name"]] = (m["unit"], m["better"])
        print(f"round {rnd + 1}/{args.rounds} done ({time.perf_counter() - t0:.0f} s)", flush=True)
    table: dict[str, Any] = {}
    if names:
        table.update(_overhead_table(args, values, meta, polls))
    if status_rounds:
        table["status"] = _status_table(status_rounds)
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(table, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
