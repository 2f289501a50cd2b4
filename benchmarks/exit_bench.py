"""Whole-program cost of procs (issue 9, speed): a tiny program that spawns 4 procs, calls them
once and exits, against the same program with no procs plus 4 bare ``python -c pass``.

Each round times, from outside and start to exit (start-up, import, spawn, call, interpreter
exit and runtime shutdown included), program A (``--procs``: 4 procs spawned, one ``call()``,
no explicit stop: the runtime shuts down at exit) and yardstick B (the same program without
procs, then 4 ``python -c pass`` started together and waited for). A and B alternate and the
ratio A/B is taken per round, so machine drift hits both. Also printed: how long A takes from the
end of its main code to its exit as seen here (the runtime's shutdown). Target: A/B <= 1.3.

Run: ``python -m benchmarks.exit_bench [--rounds 7]``. A benchmark, not a test: on a shared
2-core machine quote the medians and say the machine was loaded.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

# the tiny program; ``--procs`` spawns 4 procs and calls them; it prints its end-of-main time
# (``time.perf_counter``, CLOCK_MONOTONIC, comparable across processes) on stderr
PROGRAM = r"""
import sys, time
from monarch.actor import Actor, endpoint, this_host

class One(Actor):
    @endpoint
    def f(self) -> int:
        return 1

if "--procs" in sys.argv:
    procs = this_host().spawn_procs(per_host={"procs": 4})
    ones = procs.spawn("ones", One)
    got = list(ones.f.call().get(timeout=60).values())
    if got != [1, 1, 1, 1]:
        raise SystemExit(f"unexpected answers {got}")
sys.stderr.write(f"END {time.perf_counter()}\n")
"""


def _run_program(procs: bool) -> tuple[float, float]:
    """(wall seconds start to exit, seconds from the end of main to exit)."""
    args = [sys.executable, "-c", PROGRAM] + (["--procs"] if procs else [])
    t0 = time.perf_counter()
    out = subprocess.run(args, capture_output=True, text=True, timeout=120)
    t1 = time.perf_counter()
    if out.returncode != 0:
        raise RuntimeError(f"program failed ({out.returncode}): {out.stderr[-2000:]}")
    end = [float(line.split()[1]) for line in out.stderr.splitlines() if line.startswith("END ")]
    return t1 - t0, t1 - end[-1]


def _bare_pythons(n: int) -> float:
    t0 = time.perf_counter()
    ps = [subprocess.Popen([sys.executable, "-c", "pass"]) for _ in range(n)]
    for p in ps:
        p.wait(timeout=60)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    _run_program(True)  # warm-up: page cache, bytecode caches
    a_s, b_s, ratios, exits = [], [], [], []
    for _ in range(args.rounds):
        a, a_exit = _run_program(True)
        b0, _ = _run_program(False)
        b = b0 + _bare_pythons(4)
        a_s.append(a)
        b_s.append(b)
        ratios.append(a / b)
        exits.append(a_exit)
    print(f"rounds: {args.rounds} (A and B alternate; medians; min-max)")
    for label, xs in (
        ("A: 4 procs spawned, called, exit (s)", a_s),
        ("B: no procs + 4 bare pythons (s)", b_s),
        ("A: end of main -> exit (s)", exits),
        ("A/B per round", ratios),
    ):
        print(f"  {label:40s} {statistics.median(xs):7.3f}  ({min(xs):.3f}-{max(xs):.3f})")
    print(f"  target A/B <= 1.3: {'met' if statistics.median(ratios) <= 1.3 else 'NOT met'}")


if __name__ == "__main__":
    main()
