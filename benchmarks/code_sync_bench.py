"""Code sync speed (issue 14 §2): a 1,000-file workspace synced to 4 procs on this host.

Prints the first (full) sync time of each round and the medians of: a sync with one changed
file (target < 1 s), a sync with nothing changed, and a one-file sync with ``auto_reload=True``.
Each round uses a fresh workspace directory, so every round's first sync is a full one.

Run: ``python benchmarks/code_sync_bench.py [--files 1000] [--rounds 5] [--repeats 5]``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from monarch.actor import this_host
from monarch.tools.config.workspace import Workspace


def make_workspace(base: Path, n: int) -> Path:
    d = base / "proj"
    for i in range(n):
        p = d / f"pkg{i % 20}" / f"mod{i}.py"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(
            f'"""module {i}"""\n\nVALUE = {i}\n\n' + "def f(x):\n    return x + VALUE\n" * 20
        )
    return d


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--files", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=5, help="one-file syncs per round")
    args = ap.parse_args()
    procs = this_host().spawn_procs(per_host={"gpus": 4})
    try:
        procs.initialized.get(60)
        full, one, none, reload_ = [], [], [], []
        for r in range(args.rounds):
            with tempfile.TemporaryDirectory() as tmp:
                d = make_workspace(Path(tmp), args.files)
                ws = Workspace(dirs={d: f"bench{r}"})
                t = time.perf_counter()
                res = procs.sync_workspace(ws).get(120)
                full.append(time.perf_counter() - t)
                assert res.files_sent == args.files, res
                for k in range(args.repeats):
                    (d / "pkg0" / "mod0.py").write_text(f"VALUE = {r * 100 + k}\n")
                    t = time.perf_counter()
                    res = procs.sync_workspace(ws).get(60)
                    one.append(time.perf_counter() - t)
                    assert res.files_sent == 1, res
                    t = time.perf_counter()
                    res = procs.sync_workspace(ws).get(60)
                    none.append(time.perf_counter() - t)
                    assert res.files_sent == 0, res
                    (d / "pkg0" / "mod1.py").write_text(f"VALUE = {r * 100 + k}\n")
                    t = time.perf_counter()
                    res = procs.sync_workspace(ws, auto_reload=True).get(60)
                    reload_.append(time.perf_counter() - t)
        def ms(xs: list[float]) -> str:
            return f"median {statistics.median(xs) * 1e3:7.1f} ms  (min {min(xs) * 1e3:.1f}, max {max(xs) * 1e3:.1f}, n={len(xs)})"

        print(f"workspace: {args.files} files, 4 procs on one host")
        print(f"first (full) sync        {ms(full)}")
        print(f"one changed file         {ms(one)}   target < 1000 ms")
        print(f"nothing changed          {ms(none)}")
        print(f"one file, auto_reload    {ms(reload_)}")
    finally:
        procs.stop().get(30)


if __name__ == "__main__":
    main()
