"""The tensor engine's speed rows of issue 13, against baselines measured in the same run.

    python3 -m benchmarks.tensor_dispatch                 # 3 interleaved rounds
    python3 -m benchmarks.tensor_dispatch --rounds 5 --no-torchmonarch

Each workload of ``benchmarks/tensor_workloads.py`` runs in a fresh, isolated process (its
processes are swept after it, ``benchmarks/_procs.py``), on a ``{"gpus": 2}`` mesh, in rounds
that alternate the order of the systems. Rows (medians over rounds of per-process medians):

- per-op dispatch: ``acc = acc + 1`` issued 200 times, then one fetch, us per op, ours against
  torchmonarch 0.7.0 (its venv, ``~/.cache/monarch-idl/torchmonarch-venv``). Target <= 0.25x.
- ``reduce("gpus", "sum")`` of 4 MiB float32, ms, ours (out of place, and ``reduce_`` in place)
  against a raw gloo allreduce of the same tensor between the same procs, 20 back to back, both
  as elapsed / 20 (also shown: against gloo's median single allreduce, which leaves out the
  stalls of a loaded machine that the elapsed figures include). Target <= 1.5x.
  torchmonarch is not run: its reduce needs CUDA/NCCL (on CPU it fails, "no comm found").
- fetch of a 16 MiB shard, GB/s, ours and torchmonarch; and of a 0-d tensor, ms.
  Target >= 1 GB/s.

Benchmarks, not tests: nothing here asserts a time. The machine is small and shared; read the
ratios, which come from one run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import _procs
from benchmarks.run import REPO, TORCHMONARCH_VENV, _env
from benchmarks.tensor_workloads import RESULT_PREFIX

WORKLOADS = {
    "dispatch": ("ours", "torchmonarch"),
    "fetch": ("ours", "torchmonarch"),
    "reduce": ("ours",),
}


def run_one(py: str, name: str, quick: bool, timeout_s: float) -> dict[str, Any]:
    cmd = [py, "-m", "benchmarks.tensor_workloads", name, "--json"] + (["--quick"] if quick else [])
    done = _procs.run_isolated(
        cmd, env=_env(), cwd=str(REPO), timeout_s=timeout_s, token=_procs.new_token()
    )
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            out: dict[str, Any] = json.loads(line[len(RESULT_PREFIX) :])
            out["leftover"] = done.leftover
            return out
    why = "timed out" if done.timed_out else f"exit {done.returncode}"
    tail = " | ".join(done.stderr.strip().splitlines()[-2:])
    return {"workload": name, "error": f"{why}: {tail}", "leftover": done.leftover}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="tensor-engine speed rows (issue 13)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions per process")
    parser.add_argument("--no-torchmonarch", action="store_true")
    parser.add_argument("--venv", type=Path, default=TORCHMONARCH_VENV)
    parser.add_argument("--timeout-s", type=float, default=240.0, help="limit per workload process")
    parser.add_argument(
        "--json", type=Path, default=None, help="also write every round's values here"
    )
    args = parser.parse_args(argv)
    _procs.become_subreaper()
    systems = {"ours": sys.executable}
    tm = args.venv / "bin" / "python"
    if not args.no_torchmonarch:
        if tm.exists():
            systems["torchmonarch"] = str(tm)
        else:
            print(
                f"torchmonarch venv missing at {args.venv}: create it as benchmarks/README.md says; skipped"
            )
    runs: dict[tuple[str, str], list[dict[str, float]]] = {}
    errors: dict[tuple[str, str], str] = {}
    for r in range(args.rounds):
        order = list(systems) if r % 2 == 0 else list(reversed(systems))
        for name, who in WORKLOADS.items():
            for system in order:
                if system not in who:
                    continue
                res = run_one(systems[system], name, args.quick, args.timeout_s)
                if "values" in res:
                    runs.setdefault((name, system), []).append(res["values"])
                else:
                    errors[(name, system)] = res.get("error", "?")
                leftover = f" leftover={res['leftover']}" if res.get("leftover") else ""
                print(
                    f"round {r + 1}/{args.rounds} {name:8} {system:12} {res.get('values', res.get('error'))}{leftover}",
                    flush=True,
                )

    def med(name: str, system: str, key: str) -> float | None:
        vals = [v[key] for v in runs.get((name, system), []) if key in v]
        return statistics.median(vals) if vals else None

    def fmt(x: float | None, unit: str) -> str:
        return "-" if x is None else f"{x:,.2f} {unit}"

    def ratio(a: float | None, b: float | None) -> str:
        return "-" if a is None or b is None else f"{a / b:.3f}x"

    print()
    print(
        f"medians over {args.rounds} rounds (one run; the machine is shared: figures measured under load)"
    )
    d_ours, d_tm = (
        med("dispatch", "ours", "total_us_per_op"),
        med("dispatch", "torchmonarch", "total_us_per_op"),
    )
    i_ours, i_tm = (
        med("dispatch", "ours", "issue_us_per_op"),
        med("dispatch", "torchmonarch", "issue_us_per_op"),
    )
    print(
        f"dispatch, issue + fetch  ours {fmt(d_ours, 'us/op'):>14}  torchmonarch {fmt(d_tm, 'us/op'):>14}  ratio {ratio(d_ours, d_tm)} (target <= 0.25x)"
    )
    print(
        f"dispatch, issue only     ours {fmt(i_ours, 'us/op'):>14}  torchmonarch {fmt(i_tm, 'us/op'):>14}  ratio {ratio(i_ours, i_tm)}"
    )
    g = med("reduce", "ours", "gloo_allreduce_ms")
    gm = med("reduce", "ours", "gloo_allreduce_median_ms")
    for key, label in (
        ("reduce_ms", "reduce 4 MiB          "),
        ("reduce_inplace_ms", "reduce_ 4 MiB in place"),
    ):
        o = med("reduce", "ours", key)
        print(
            f"{label}   ours {fmt(o, 'ms'):>14}  raw gloo     {fmt(g, 'ms'):>14}  ratio {ratio(o, g)} (target <= 1.5x);"
            f" against gloo's median single allreduce ({fmt(gm, 'ms')}) {ratio(o, gm)}"
        )
    f_ours, f_tm = (
        med("fetch", "ours", "fetch16_gb_s"),
        med("fetch", "torchmonarch", "fetch16_gb_s"),
    )
    print(
        f"fetch 16 MiB shard       ours {fmt(f_ours, 'GB/s'):>14}  torchmonarch {fmt(f_tm, 'GB/s'):>14}  ratio {ratio(f_ours, f_tm)} (target >= 1 GB/s)"
    )
    s_ours, s_tm = (
        med("fetch", "ours", "fetch_scalar_ms"),
        med("fetch", "torchmonarch", "fetch_scalar_ms"),
    )
    print(
        f"fetch 0-d tensor         ours {fmt(s_ours, 'ms'):>14}  torchmonarch {fmt(s_tm, 'ms'):>14}  ratio {ratio(s_ours, s_tm)}"
    )
    for (name, system), err in sorted(errors.items()):
        print(f"error: {name} under {system}: {err}")
    if args.json is not None:
        args.json.write_text(json.dumps({f"{n}/{s}": v for (n, s), v in runs.items()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
