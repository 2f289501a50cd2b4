"""Benchmark of ``monarch.rdma`` data plane: same-host (cma) and TCP transfers vs raw syscalls.

Prints medians and ratios measured in one run (the machine is noisy: compare ratios):

- 64 MiB ``read_into`` / ``write_from`` on the same host vs raw ``process_vm_readv``/``writev``
  of the same bytes between the same two processes (target: >= 80 %);
- 64 MiB over the TCP backend on loopback (target: >= 1.5 GB/s);
- 4 KiB read latency for each backend.

usage: python benchmarks/rdma_bench.py [--repeats N] [--json]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

from monarch.rdma import RDMABuffer, configure
from monarch.rdma._cma import process_vm_readv, process_vm_writev

BIG = 64 << 20
SMALL = 4 << 10

OWNER_CODE = """
import sys
from monarch.rdma import RDMABuffer
keep = []
for size in map(int, sys.argv[1:]):
    mem = bytearray(b"\\x5a" * size)
    buf = RDMABuffer(memoryview(mem))
    keep.append((mem, buf))
    print(buf.to_bytes().hex(), flush=True)
sys.stdin.read()
"""


def median_s(fn: Callable[[], None], repeats: int) -> float:
    fn()  # warm up: page faults, connections, queue pairs
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--json", action="store_true", help="print one JSON object as well")
    args = parser.parse_args()

    owner = subprocess.Popen(
        [sys.executable, "-c", OWNER_CODE, str(BIG), str(SMALL)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert owner.stdout is not None
        big = RDMABuffer.from_bytes(bytes.fromhex(owner.stdout.readline()))
        small = RDMABuffer.from_bytes(bytes.fromhex(owner.stdout.readline()))
        dst = bytearray(b"\x01" * BIG)  # touched: no page faults in any timed run
        src = bytearray(b"\x02" * BIG)
        dst_addr = ctypes.addressof(ctypes.c_char.from_buffer(dst))
        src_addr = ctypes.addressof(ctypes.c_char.from_buffer(src))
        pid, remote = big._desc.pid, big._desc.addr
        small_dst = bytearray(SMALL)
        r = args.repeats
        results: dict[str, float] = {}

        configure(backend="auto")

        # Alternate raw and monarch runs one by one so both see the same machine state; the
        # ratio reported is of the two medians.
        def paired(raw: Callable[[], None], ours: Callable[[], None]) -> tuple[float, float]:
            raw()
            ours()
            t_raw, t_ours = [], []
            for _ in range(r * 3):
                start = time.perf_counter()
                raw()
                t_raw.append(time.perf_counter() - start)
                start = time.perf_counter()
                ours()
                t_ours.append(time.perf_counter() - start)
            return BIG / statistics.median(t_raw) / 1e9, BIG / statistics.median(t_ours) / 1e9

        results["raw_readv_GBps"], results["cma_read_GBps"] = paired(
            lambda: process_vm_readv(pid, dst_addr, remote, BIG),
            lambda: big.read_into(memoryview(dst)).get(60),
        )
        results["raw_writev_GBps"], results["cma_write_GBps"] = paired(
            lambda: process_vm_writev(pid, src_addr, remote, BIG),
            lambda: big.write_from(memoryview(src)).get(60),
        )
        results["small_raw_us"] = (
            median_s(lambda: process_vm_readv(pid, dst_addr, small._desc.addr, SMALL), 200) * 1e6
        )
        results["small_cma_us"] = (
            median_s(lambda: small.read_into(memoryview(small_dst)).get(10), 200) * 1e6
        )

        configure(backend="tcp")
        results["tcp_read_GBps"] = (
            BIG / median_s(lambda: big.read_into(memoryview(dst)).get(60), r) / 1e9
        )
        results["tcp_write_GBps"] = (
            BIG / median_s(lambda: big.write_from(memoryview(src)).get(60), r) / 1e9
        )
        results["small_tcp_us"] = (
            median_s(lambda: small.read_into(memoryview(small_dst)).get(10), 200) * 1e6
        )
        configure(backend="auto")
    finally:
        owner.kill()
        owner.wait(10)

    read_ratio = results["cma_read_GBps"] / results["raw_readv_GBps"]
    write_ratio = results["cma_write_GBps"] / results["raw_writev_GBps"]
    print(
        f"64 MiB, medians (cma: {3 * args.repeats} runs alternating with raw; tcp: {args.repeats}):"
    )
    print(f"  raw process_vm_readv   {results['raw_readv_GBps']:6.2f} GB/s")
    print(
        f"  read_into  (cma)       {results['cma_read_GBps']:6.2f} GB/s  = {read_ratio:5.1%} of raw  (target >= 80%)"
    )
    print(f"  raw process_vm_writev  {results['raw_writev_GBps']:6.2f} GB/s")
    print(
        f"  write_from (cma)       {results['cma_write_GBps']:6.2f} GB/s  = {write_ratio:5.1%} of raw  (target >= 80%)"
    )
    print(f"  read_into  (tcp)       {results['tcp_read_GBps']:6.2f} GB/s  (target >= 1.5 GB/s)")
    print(f"  write_from (tcp)       {results['tcp_write_GBps']:6.2f} GB/s  (target >= 1.5 GB/s)")
    print("4 KiB read latency, medians of 200:")
    print(f"  raw process_vm_readv   {results['small_raw_us']:7.1f} us")
    print(f"  read_into  (cma)       {results['small_cma_us']:7.1f} us")
    print(f"  read_into  (tcp)       {results['small_tcp_us']:7.1f} us")
    if args.json:
        print(json.dumps({**results, "cma_read_ratio": read_ratio, "cma_write_ratio": write_ratio}))


if __name__ == "__main__":
    main()
