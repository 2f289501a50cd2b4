"""Tensor-engine workloads, one per process: ``python -m benchmarks.tensor_workloads NAME``.

Written against Monarch's public tensor API (``this_host().spawn_procs``, ``procs.activate()``,
``monarch.fetch_shard``, ``monarch.remote``, ``Tensor.reduce``), so the same file runs under
monarch-idl and under torchmonarch (the interpreter decides). With ``--json`` the last stdout
line is ``BENCH-RESULT <json>``: ``{"workload", "implementation", "values": {...}}`` (medians
over repetitions, the first repetition excluded: it pays one-off imports and group set-up), or
``{"error": ...}``. The orchestrator is ``benchmarks/tensor_dispatch.py``.

Workloads, each on a fresh ``{"gpus": 2}`` mesh:

- ``dispatch``: ``acc = acc + 1`` issued 200 times inside ``activate()``, then one fetch of
  ``acc`` from rank 1: us per op of the issue alone and of issue + fetch.
- ``fetch``: fetch of a 16 MiB float32 shard (4 Mi elements) from rank 1: ms and GB/s
  (10^9 bytes/s), and of a 0-d tensor: ms.
- ``reduce``: ``x.reduce("gpus", "sum")`` of a 4 MiB float32 tensor (1 Mi elements), 20 issued
  back to back and then one fetch of a 0-d tensor on rank 0 (its worker answers after the 20):
  ms per reduce; the same with ``reduce_`` (in place) on a copy of ``x``. Then a raw gloo ``allreduce`` of the same tensor between the same procs, in a
  remote function: a ``ProcessGroupGloo`` of its own on each rank (rendezvous through a
  ``TCPStore`` in the client), 20 allreduces in place on one copy, back to back, timed on the
  rank: ms per allreduce of the slower rank, as elapsed / 20 (measured like the engine's
  figure) and as the median of the single allreduces (stricter: no stalls). monarch-idl only: torchmonarch's reduce needs CUDA/NCCL ("no comm found" on CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import traceback
from typing import Any

RESULT_PREFIX = "BENCH-RESULT "
N_OPS = 200
REPS = 7
FETCH_REPS = 11
REDUCE_K = 20
MIB = 1 << 20
WAIT_S = 120.0


def _implementation() -> str:
    from importlib import metadata

    for dist in ("torchmonarch", "monarch-idl"):
        try:
            return f"{dist} {metadata.version(dist)}"
        except metadata.PackageNotFoundError:
            continue
    return "unknown"


def _procs() -> Any:
    from monarch.actor import this_host

    return this_host().spawn_procs(per_host={"gpus": 2})


def _stop(procs: Any) -> None:
    try:
        fut = procs.stop()
        if fut is not None and hasattr(fut, "get"):
            fut.get()
    except Exception:  # the orchestrator sweeps what is left
        traceback.print_exc()


def _fetch(t: Any, **coords: int) -> Any:
    import monarch

    return monarch.fetch_shard(t, **coords).result(WAIT_S)


def dispatch(quick: bool) -> dict[str, float]:
    import torch

    issue, total = [], []
    procs = _procs()
    try:
        for r in range(REPS if not quick else 3):
            with procs.activate():
                acc = torch.ones(3)
                t0 = time.perf_counter()
                for _ in range(N_OPS):
                    acc = acc + 1
                t1 = time.perf_counter()
                got = _fetch(acc, gpus=1)
                t2 = time.perf_counter()
            if float(got[0]) != N_OPS + 1:
                raise AssertionError(f"acc is {got}, expected {N_OPS + 1}")
            if r:
                issue.append((t1 - t0) / N_OPS * 1e6)
                total.append((t2 - t0) / N_OPS * 1e6)
    finally:
        _stop(procs)
    return {
        "issue_us_per_op": statistics.median(issue),
        "total_us_per_op": statistics.median(total),
    }


def fetch(quick: bool) -> dict[str, float]:
    import torch

    big, small = [], []
    procs = _procs()
    try:
        with procs.activate():
            x = torch.rand(4 * MIB)  # 16 MiB of float32
            s = torch.zeros(())
        for r in range(FETCH_REPS if not quick else 4):
            t0 = time.perf_counter()
            got = _fetch(x, gpus=1)
            t1 = time.perf_counter()
            _fetch(s, gpus=1)
            t2 = time.perf_counter()
            if got.shape != (4 * MIB,) or got.dtype != torch.float32:
                raise AssertionError(f"fetched {got.shape} {got.dtype}")
            if r:
                big.append(t1 - t0)
                small.append(t2 - t1)
    finally:
        _stop(procs)
    t = statistics.median(big)
    return {
        "fetch16_ms": t * 1e3,
        "fetch16_gb_s": 16 * MIB / t / 1e9,
        "fetch_scalar_ms": statistics.median(small) * 1e3,
    }


def raw_allreduce(x: Any, rank: Any, host: str, port: int, world: int, k: int, prefix: str) -> Any:
    """Remote function: ``k`` gloo allreduces of one copy of ``x``, back to back, in a group of
    this benchmark's own; returns this rank's seconds per allreduce as ``[elapsed / k, median
    of the single allreduces]`` (float64): the first is measured as the tensor engine's figure
    is, the second leaves out the stalls of a loaded machine."""
    import datetime

    import torch
    import torch.distributed as dist

    timeout = datetime.timedelta(seconds=60)
    store = dist.PrefixStore(prefix, dist.TCPStore(host, port, world + 1, False, timeout=timeout))
    pg = dist.ProcessGroupGloo(store, int(rank), world, timeout)
    buf = x.clone()
    opts = dist.AllreduceOptions()
    opts.reduceOp = dist.ReduceOp.SUM
    pg.allreduce([buf], opts).wait()  # connects the pairs
    times = []
    t0 = time.perf_counter()
    for _ in range(k):  # in place on the same buffer (the sums grow; no copy between them)
        t1 = time.perf_counter()
        pg.allreduce([buf], opts).wait()
        times.append(time.perf_counter() - t1)
    elapsed = time.perf_counter() - t0
    return torch.tensor([elapsed / k, statistics.median(times)], dtype=torch.float64)


def reduce(quick: bool) -> dict[str, float]:
    import monarch
    import torch
    import torch.distributed as dist

    ours, ours_inplace, raw, raw_median = [], [], [], []
    procs = _procs()
    try:
        with procs.activate():
            x = torch.rand(MIB)  # 4 MiB of float32
            tiny = torch.zeros(())
            s = x.reduce("gpus", "sum")
        expect = _fetch(x, gpus=0) + _fetch(x, gpus=1)
        if not torch.allclose(_fetch(s, gpus=1), expect):
            raise AssertionError("the reduce is wrong")
        for r in range(REPS if not quick else 3):
            with procs.activate():
                t0 = time.perf_counter()
                for _ in range(REDUCE_K):
                    s = x.reduce("gpus", "sum")
            _fetch(tiny, gpus=0)
            if r:
                ours.append((time.perf_counter() - t0) / REDUCE_K)
        for r in range(REPS if not quick else 3):
            with procs.activate():
                y = x.clone()
                t0 = time.perf_counter()
                for _ in range(REDUCE_K):
                    y.reduce_("gpus", "sum")
            _fetch(tiny, gpus=0)
            if r:
                ours_inplace.append((time.perf_counter() - t0) / REDUCE_K)
        host = "127.0.0.1"
        store = dist.TCPStore(host, 0, 3, True, wait_for_workers=False)
        fn = monarch.remote(raw_allreduce, propagate=lambda *a: torch.empty(2, dtype=torch.float64))
        for r in range(REPS if not quick else 3):
            with procs.activate():
                m = fn(x, procs.rank_tensor("gpus"), host, store.port, 2, REDUCE_K, f"raw{r}")
            per_rank = [_fetch(m, gpus=g) for g in range(2)]
            if r:
                raw.append(max(float(v[0]) for v in per_rank))
                raw_median.append(max(float(v[1]) for v in per_rank))
    finally:
        _stop(procs)
    return {
        "reduce_ms": statistics.median(ours) * 1e3,
        "reduce_inplace_ms": statistics.median(ours_inplace) * 1e3,
        "gloo_allreduce_ms": statistics.median(raw) * 1e3,
        "gloo_allreduce_median_ms": statistics.median(raw_median) * 1e3,
    }


WORKLOADS = {"dispatch": dispatch, "fetch": fetch, "reduce": reduce}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workload", choices=sorted(WORKLOADS))
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--json", action="store_true", help=f"print '{RESULT_PREFIX}<json>' last")
    args = parser.parse_args(argv)
    result: dict[str, Any] = {
        "workload": args.workload,
        "implementation": _implementation(),
        "pid": os.getpid(),
    }
    try:
        result["values"] = WORKLOADS[args.workload](args.quick)
    except Exception as exc:
        traceback.print_exc()
        result["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    if args.json:
        print(RESULT_PREFIX + json.dumps(result), flush=True)
    else:
        print(json.dumps(result, indent=2))
    return 0 if "error" not in result else 1


if __name__ == "__main__":
    sys.exit(main())
