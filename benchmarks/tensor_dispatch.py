"""Per-op dispatch of the tensor engine against a local torch op, same run (issue 13 §Speed).

Issues ``acc = acc + 1`` 200 times inside ``procs.activate()`` on a {"gpus": 2} mesh, then one
fetch; prints medians (us per op) of the client-side issue time and of issue + fetch, beside
the same loop on a local tensor. Not a test.

    python3 benchmarks/tensor_dispatch.py
"""

from __future__ import annotations

import statistics
import time

import monarch
import torch
from monarch.testing import proc_mesh

N = 200
ROUNDS = 9


def main() -> None:
    local = []
    for _ in range(ROUNDS):
        acc = torch.ones(3)
        t0 = time.perf_counter()
        for _ in range(N):
            acc = acc + 1
        local.append((time.perf_counter() - t0) / N * 1e6)
    issue, total = [], []
    with proc_mesh({"gpus": 2}) as procs:
        for r in range(ROUNDS + 1):
            with procs.activate():
                acc = torch.ones(3)
                t0 = time.perf_counter()
                for _ in range(N):
                    acc = acc + 1
                t1 = time.perf_counter()
            got = monarch.fetch_shard(acc, gpus=1).get(60)
            t2 = time.perf_counter()
            assert float(got[0]) == N + 1
            if r:  # the first round pays torch's one-off imports (meta kernels load torch._dynamo)
                issue.append((t1 - t0) / N * 1e6)
                total.append((t2 - t0) / N * 1e6)
    lm, im, tm = statistics.median(local), statistics.median(issue), statistics.median(total)
    print(f"local torch op          {lm:8.1f} us/op")
    print(f"monarch.Tensor issue    {im:8.1f} us/op  ({im / lm:.1f}x local)")
    print(f"issue + one fetch       {tm:8.1f} us/op  ({tm / lm:.1f}x local)")


if __name__ == "__main__":
    main()
