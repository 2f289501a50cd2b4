"""Benchmark orchestrator: ``python -m benchmarks.run [--quick] [--only NAME] [--json PATH]``.

Runs every workload of :mod:`benchmarks.workloads` in a fresh subprocess, under our interpreter
(monarch-idl) and under torchmonarch's venv, in interleaved rounds (the system order alternates
every round, so machine drift hits both), plus the raw OS baselines in the same rounds. Reports
the median over rounds of each process's median, as a rich table, a JSON file and PNG plots.
Ratios are the headline; absolute numbers on this noisy 2-core machine are not.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import _procs
from benchmarks.workloads import ACTOR_WORKLOADS, RAW_WORKLOADS, RESULT_PREFIX

REPO = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
TORCHMONARCH_VENV = Path.home() / ".cache" / "monarch-idl" / "torchmonarch-venv"
TORCHMONARCH_PINS = ["torch==2.13.0", "torchmonarch==0.7.0"]  # any other torch spec pulls CUDA

OURS, MONARCH, RAW = "ours", "torchmonarch", "raw"


def escape(text: str) -> str:
    from rich.markup import escape as _escape

    return _escape(text)


def _console() -> Any:
    from rich.console import Console

    # Wide enough for the table when piped to a file (rich would fall back to 80 columns).
    return Console(highlight=False, width=None if sys.stdout.isatty() else 150)


# --------------------------------------------------------------------------- interpreters


def ensure_torchmonarch(venv: Path, console: Any) -> Path:
    """Returns torchmonarch's interpreter, creating its venv (outside the tree) if missing.

    Raises:
        RuntimeError: the venv cannot be created or ``import monarch.actor`` fails in it.
    """
    py = venv / "bin" / "python"
    if not py.exists():
        console.print(f"[yellow]creating {venv} ({' '.join(TORCHMONARCH_PINS)}); takes minutes")
        venv.parent.mkdir(parents=True, exist_ok=True)
        base = shutil.which("python3") or sys.executable
        subprocess.run([base, "-m", "venv", str(venv)], check=True, timeout=600)
        subprocess.run(
            [str(py), "-m", "pip", "install", "-q", *TORCHMONARCH_PINS], check=True, timeout=3600
        )
    probe = _probe(py)
    if probe is not None:
        raise RuntimeError(f"torchmonarch venv at {venv} is unusable: {probe}")
    return py


def compile_bytecode(py: Path | str) -> str:
    """Compiles the bytecode of ``monarch`` (and its sibling packages) under ``py``, as pip does.

    ``pip install`` writes ``.pyc`` files for every module of a wheel, so torchmonarch's venv has
    them; an editable install gets them only when an import may write them, which
    ``PYTHONDONTWRITEBYTECODE=1`` (set on some machines, this sandbox included) forbids. Without
    this step the first-spawn rows would compare our source compilation against torchmonarch's
    cached bytecode. Runs in ``py``'s own process so that it compiles what that interpreter imports.

    Returns:
        A line for the report's notes: the folders compiled.

    Raises:
        RuntimeError: ``py`` cannot import ``monarch`` or compileall fails.
    """
    code = (
        "import compileall, os, sys, monarch\n"
        "roots = sorted({os.path.dirname(p) for p in monarch.__path__})\n"
        "dirs = [os.path.join(r, n) for r in roots for n in os.listdir(r)"
        " if n.startswith('monarch') and os.path.isdir(os.path.join(r, n))]\n"
        "ok = all(compileall.compile_dir(d, quiet=1, workers=1) for d in dirs)\n"
        "print(' '.join(dirs)); sys.exit(0 if ok else 1)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    r = subprocess.run([str(py), "-c", code], capture_output=True, text=True, timeout=300, env=env)
    if r.returncode != 0:
        raise RuntimeError(f"compileall under {py} failed: {(r.stderr or r.stdout).strip()[-400:]}")
    return f"bytecode compiled before the run: {r.stdout.strip()}"


def _probe(py: Path | str) -> str | None:
    """None when ``from monarch.actor import Actor, endpoint, this_host`` works under ``py``."""
    code = "from monarch.actor import Actor, endpoint, this_host"
    try:
        r = subprocess.run(
            [str(py), "-c", code],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=REPO,
            env=_env(),
        )
    except subprocess.TimeoutExpired:
        return "import timed out"
    if r.returncode != 0:
        lines = r.stderr.strip().splitlines()
        return lines[-1] if lines else f"exit {r.returncode}"
    return None


def _version(py: Path | str, dist: str) -> str | None:
    code = f"from importlib.metadata import version; print(version({dist!r}))"
    r = subprocess.run([str(py), "-c", code], capture_output=True, text=True, timeout=60)
    return r.stdout.strip() or None


def _env() -> dict[str, str]:
    env = dict(os.environ)
    # Spawned procs unpickle benchmarks._actors by reference: they must find the package.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    env.pop("VIRTUAL_ENV", None)
    return env


# --------------------------------------------------------------------------- running


def run_workload(py: Path | str, name: str, quick: bool, timeout_s: float) -> dict[str, Any]:
    """One workload in a fresh, isolated subprocess; always returns a result dict."""
    cmd = [str(py), "-m", "benchmarks.workloads", name, "--json"] + (["--quick"] if quick else [])
    done = _procs.run_isolated(
        cmd, env=_env(), cwd=str(REPO), timeout_s=timeout_s, token=_procs.new_token()
    )
    result: dict[str, Any] | None = None
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            result = json.loads(line[len(RESULT_PREFIX) :])
            break
    if result is None:
        why = "timed out" if done.timed_out else f"exit {done.returncode}, no result line"
        tail = done.stderr.strip().splitlines()[-3:]
        result = {"workload": name, "metrics": [], "error": f"{why}: {' | '.join(tail)}"}
    result["wall_s"] = done.wall_s
    result["leftover_processes"] = done.leftover
    result["stderr_tail"] = done.stderr.strip().splitlines()[-15:]
    return result


def run_rounds(
    systems: dict[str, Path | str],
    actor_names: list[str],
    raw_names: list[str],
    rounds: int,
    quick: bool,
    timeout_s: float,
    console: Any,
) -> list[dict[str, Any]]:
    """Interleaved rounds: per round, each workload under each system (order alternating)."""
    runs: list[dict[str, Any]] = []
    order = [s for s in (OURS, MONARCH) if s in systems]
    for r in range(rounds):
        this_order = order if r % 2 == 0 else order[::-1]
        plan = [(RAW, n) for n in raw_names] + [(s, n) for n in actor_names for s in this_order]
        for system, name in plan:
            py = sys.executable if system == RAW else systems[system]
            res = run_workload(py, name, quick, timeout_s)
            res.update(system=system, round=r)
            runs.append(res)
            status = "[red]error[/]" if "error" in res else "ok"
            extra = (
                f" [yellow]({res['leftover_processes']} leftover procs killed)[/]"
                if res["leftover_processes"]
                else ""
            )
            console.print(
                f"round {r + 1}/{rounds}  {name:14s} {system:12s} {res['wall_s']:6.1f}s  {status}{extra}"
            )
            if "error" in res:
                console.print("    " + escape(res["error"][:300]), style="red")
    return runs


def aggregate(runs: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """``{system: {metric: {value, rounds, unit, better, group, x}}}``: median over rounds."""
    acc: dict[str, dict[str, dict[str, Any]]] = {}
    for res in runs:
        for m in res["metrics"]:
            slot = acc.setdefault(res["system"], {}).setdefault(
                m["name"],
                {k: m.get(k) for k in ("unit", "better", "group", "x")} | {"rounds": []},
            )
            slot["rounds"].append(m["value"])
    for per in acc.values():
        for slot in per.values():
            slot["value"] = statistics.median(slot["rounds"])
    return acc


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    all_names = list(RAW_WORKLOADS) + list(ACTOR_WORKLOADS)
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="fewer rounds and iterations (< ~3 min)"
    )
    parser.add_argument(
        "--only",
        action="append",
        metavar="NAME",
        help=f"run only these workloads (repeat or comma-separate): {', '.join(all_names)}",
    )
    parser.add_argument("--json", type=Path, default=RESULTS / "latest.json", help="result file")
    parser.add_argument("--no-torchmonarch", action="store_true", help="skip torchmonarch")
    parser.add_argument("--no-ours", action="store_true", help="skip monarch-idl")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 2 quick, 5 full)")
    parser.add_argument(
        "--timeout-s", type=float, help="per-workload limit (default 90 quick, 300)"
    )
    parser.add_argument("--venv", type=Path, default=TORCHMONARCH_VENV, help="torchmonarch venv")
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument("--markdown", type=Path, help="also write the table as markdown here")
    args = parser.parse_args(argv)

    names = all_names
    if args.only:
        wanted = [n.strip() for item in args.only for n in item.split(",") if n.strip()]
        unknown = sorted(set(wanted) - set(all_names))
        if unknown:
            parser.error(f"unknown workload(s) {unknown}; choose from {all_names}")
        names = [n for n in all_names if n in wanted]
    rounds = args.rounds or (2 if args.quick else 5)
    timeout_s = args.timeout_s or (90.0 if args.quick else 300.0)

    console = _console()
    _procs.become_subreaper()
    # SIGTERM unwinds like Ctrl-C, through run_isolated's cleanup of the running workload.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    t_start = time.perf_counter()
    systems: dict[str, Path | str] = {}
    notes: dict[str, str] = {}
    if not args.no_ours:
        why = _probe(sys.executable)
        if why is None:
            systems[OURS] = sys.executable
            notes["bytecode"] = compile_bytecode(sys.executable)
        else:
            notes[OURS] = f"not run: {why}"
            console.print(f"ours ({sys.executable}) unavailable: {escape(why)}", style="red")
    if not args.no_torchmonarch:
        try:
            systems[MONARCH] = ensure_torchmonarch(args.venv, console)
        except (RuntimeError, subprocess.SubprocessError, OSError) as exc:
            notes[MONARCH] = f"not run: {exc}"
            console.print(f"torchmonarch unavailable: {escape(str(exc))}", style="red")
    actor_names = [n for n in names if n in ACTOR_WORKLOADS] if systems else []
    raw_names = [n for n in names if n in RAW_WORKLOADS]

    runs = run_rounds(systems, actor_names, raw_names, rounds, args.quick, timeout_s, console)
    agg = aggregate(runs)

    from benchmarks import _report

    meta = {
        "created_unix": time.time(),
        "quick": args.quick,
        "rounds": rounds,
        "workloads": names,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "interpreters": {k: str(v) for k, v in systems.items()},
        "versions": {
            OURS: _version(sys.executable, "monarch-idl"),
            MONARCH: _version(systems[MONARCH], "torchmonarch") if MONARCH in systems else None,
            "torch(torchmonarch venv)": _version(systems[MONARCH], "torch")
            if MONARCH in systems
            else None,
        },
        "notes": notes,
        "git_commit": _git_commit(),
        "wall_s": time.perf_counter() - t_start,
    }
    report = _report.build(agg, meta, runs)
    _report.print_table(report, console)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1, sort_keys=False) + "\n")
    console.print(f"JSON: {args.json}")
    if args.markdown:
        args.markdown.write_text(_report.markdown(report))
        console.print(f"markdown: {args.markdown}")
    if not args.no_plots:
        for path in _report.plots(report, args.json.parent):
            console.print(f"plot: {path}")
    console.print(f"total {time.perf_counter() - t_start:.0f}s")
    return 0


def _git_commit() -> str | None:
    try:
        r = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout.strip() or None


if __name__ == "__main__":
    raise SystemExit(main())
