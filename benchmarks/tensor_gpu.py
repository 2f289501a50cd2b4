"""The GPU row of issue 13: ``reduce("gpus", "sum")`` of 4 MiB float32 CUDA tensors over the
engine's NCCL groups, against a raw NCCL allreduce of the same tensor between the same procs.

    python3 -m benchmarks.tensor_gpu                  # {"gpus": min(2, GPUs)} mesh, 5 rounds
    python3 -m benchmarks.tensor_gpu --rounds 3 --json out.json

Each round: 20 ``x.reduce("gpus", "sum")`` (and 20 ``reduce_`` in place) issued back to back,
then one fetch of a 0-d CUDA tensor from rank 0 (its worker answers after the 20, and the
fetch's copy to the CPU waits for the GPU); ms per reduce. The baseline, in a remote function:
a ``ProcessGroupNCCL`` of its own on each rank (rendezvous through a ``TCPStore`` in the
client), 20 allreduces in place, ``torch.cuda.synchronize()``, elapsed / 20 of the slower rank.
Ratios are medians of per-round ratios. With one GPU the mesh has one rank (NCCL needs one GPU
per rank): the figures then measure the engine's overhead around a trivial collective.

A benchmark, not a test: it asserts only that the reduce is right. Exits 2 without CUDA.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

K = 20
MIB = 1 << 20
WAIT_S = 120.0


def raw_nccl(x: Any, rank: Any, host: str, port: int, world: int, k: int, prefix: str) -> Any:
    """Remote function: ``k`` raw NCCL allreduces of one copy of ``x`` (on this rank's GPU), back
    to back; this rank's seconds per allreduce (elapsed / k, after a synchronize), float64."""
    import datetime

    import torch
    import torch.distributed as dist

    timeout = datetime.timedelta(seconds=60)
    store = dist.PrefixStore(prefix, dist.TCPStore(host, port, world + 1, False, timeout=timeout))
    opts = dist.ProcessGroupNCCL.Options()
    opts._timeout = timeout
    pg = dist.ProcessGroupNCCL(store, int(rank), world, opts)
    buf = x.clone()
    ar = dist.AllreduceOptions()
    ar.reduceOp = dist.ReduceOp.SUM
    pg.allreduce([buf], ar).wait()  # builds the communicator
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(k):
        pg.allreduce([buf], ar).wait()
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - t0
    if hasattr(pg, "abort"):
        pg.abort()
    return torch.tensor([elapsed / k], dtype=torch.float64)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--gpus", type=int, default=None, help="ranks (default: min(2, GPUs))")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)

    import torch
    import torch.distributed as dist

    if not torch.cuda.is_available():
        print(f"no CUDA here (torch {torch.__version__}): nothing to measure", file=sys.stderr)
        return 2
    import monarch
    from monarch.actor import this_host

    n = args.gpus or min(2, torch.cuda.device_count())
    procs = this_host().spawn_procs(per_host={"gpus": n})
    rows: dict[str, list[float]] = {"reduce_ms": [], "reduce_inplace_ms": [], "nccl_ms": []}
    try:
        with procs.activate():
            x = torch.rand(MIB, device="cuda")  # 4 MiB of float32 on each rank's GPU
            tiny = torch.zeros((), device="cuda")
            s = x.reduce("gpus", "sum")
        parts = [monarch.fetch_shard(x, gpus=g).get(WAIT_S) for g in range(n)]
        if not torch.allclose(monarch.fetch_shard(s, gpus=n - 1).get(WAIT_S), sum(parts)):
            raise AssertionError("the NCCL reduce is wrong")
        host = "127.0.0.1"
        store = dist.TCPStore(host, 0, n + 1, True, wait_for_workers=False)
        fn = monarch.remote(raw_nccl, propagate=lambda *a: torch.empty(1, dtype=torch.float64))
        for r in range(args.rounds + 1):  # round 0 warms up (groups, allocator)
            with procs.activate():
                t0 = time.perf_counter()
                for _ in range(K):
                    s = x.reduce("gpus", "sum")
            monarch.fetch_shard(tiny, gpus=0).get(WAIT_S)
            ours = (time.perf_counter() - t0) / K
            with procs.activate():
                y = x.clone()
                t0 = time.perf_counter()
                for _ in range(K):
                    y.reduce_("gpus", "sum")
            monarch.fetch_shard(tiny, gpus=0).get(WAIT_S)
            inplace = (time.perf_counter() - t0) / K
            with procs.activate():
                m = fn(x, procs.rank_tensor("gpus"), host, store.port, n, K, f"raw{r}")
            raw = max(float(monarch.fetch_shard(m, gpus=g).get(WAIT_S)[0]) for g in range(n))
            if r:
                rows["reduce_ms"].append(ours * 1e3)
                rows["reduce_inplace_ms"].append(inplace * 1e3)
                rows["nccl_ms"].append(raw * 1e3)
    finally:
        procs.stop().get(60.0)
    ratio = [a / b for a, b in zip(rows["reduce_ms"], rows["nccl_ms"])]
    ratio_in = [a / b for a, b in zip(rows["reduce_inplace_ms"], rows["nccl_ms"])]
    out = {
        "ranks": n,
        "gpu": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "rounds": args.rounds,
        **{k: statistics.median(v) for k, v in rows.items()},
        "reduce_vs_nccl": statistics.median(ratio),
        "reduce_inplace_vs_nccl": statistics.median(ratio_in),
        "per_round": rows,
    }
    print(json.dumps(out, indent=2))
    if args.json is not None:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
