"""One benchmark workload per process: ``python -m benchmarks.workloads NAME [--quick] [--json]``.

The actor workloads use only the public Monarch actor API (``monarch.actor``), so the same file
runs under monarch-idl and under torchmonarch; the interpreter chooses the implementation. The
raw workloads measure the machine without any framework. With ``--json`` the last stdout line
is ``BENCH-RESULT <json>``: ``{"workload", "implementation", "metrics": [...]}``, each metric as
built by :func:`benchmarks._stats.metric`.

Round trips are timed one call at a time and summarised by their median; throughputs are timed
per repetition of 10,000 messages.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

from benchmarks._stats import metric

RESULT_PREFIX = "BENCH-RESULT "
MIB = 1 << 20
PAYLOAD_SIZES = [64, 1024, 16384, 262144, 1048576, 4194304, 16777216]
MESH_SIZES = [1, 4, 16, 64, 256]
SWEEP_PROCS = 4

Metrics = list[dict[str, Any]]


def _import_actor_api() -> tuple[Any, Any, float]:
    t0 = time.perf_counter()
    from monarch.actor import this_host

    from benchmarks._actors import Echo

    return this_host, Echo, time.perf_counter() - t0


def _implementation() -> str:
    """``torchmonarch x.y`` or ``monarch-idl x.y``, read from the installed distribution."""
    from importlib import metadata

    for dist in ("torchmonarch", "monarch-idl"):
        try:
            return f"{dist} {metadata.version(dist)}"
        except metadata.PackageNotFoundError:
            continue
    return "unknown"


def _stop(mesh: Any) -> None:
    """Stops a proc mesh; the orchestrator still sweeps processes if this fails."""
    try:
        fut = mesh.stop()
        if fut is not None and hasattr(fut, "get"):
            fut.get(timeout=30)
    except Exception as exc:  # cleanup must not hide the measurement; report it instead
        print(f"warning: proc mesh stop failed: {exc!r}", file=sys.stderr)


class _Procs:
    """Spawns proc meshes and stops every one of them on exit."""

    def __init__(self) -> None:
        self.this_host, self.Echo, self.import_s = _import_actor_api()
        self.meshes: list[Any] = []

    def spawn(self, per_host: dict[str, int]) -> Any:
        pm = self.this_host().spawn_procs(per_host=per_host)
        self.meshes.append(pm)
        return pm

    def echo(self, per_host: dict[str, int], name: str = "echo") -> tuple[Any, Any]:
        pm = self.spawn(per_host)
        return pm, pm.spawn(name, self.Echo)

    def __enter__(self) -> _Procs:
        return self

    def __exit__(self, *exc: object) -> None:
        for pm in reversed(self.meshes):
            _stop(pm)


def _per_call_us(fn: Callable[[int], Any], warmup: int, iters: int) -> list[float]:
    for i in range(warmup):
        fn(i)
    out = []
    for i in range(iters):
        t0 = time.perf_counter()
        fn(i)
        out.append((time.perf_counter() - t0) * 1e6)
    return out


# --------------------------------------------------------------------------- actor workloads


def call_one(quick: bool) -> Metrics:
    """Round trip of ``call_one`` with a small argument to an actor in another process."""
    with _Procs() as p:
        _, a = p.echo({"procs": 1})
        lat = _per_call_us(lambda i: a.ping.call_one(i).get(), 100, 500 if quick else 2000)
    return [metric("call_one_rtt_us", "us", "lower", lat)]


def calls_10k(quick: bool) -> Metrics:
    """10,000 ``call_one`` futures created first, then all awaited; calls per second."""
    with _Procs() as p:
        _, a = p.echo({"procs": 1})
        for i in range(200):
            a.ping.call_one(i).get()
        rates = []
        for _ in range(2 if quick else 4):
            t0 = time.perf_counter()
            futs = [a.ping.call_one(i) for i in range(10_000)]
            last = None
            for f in futs:
                last = f.get()
            rates.append(10_000 / (time.perf_counter() - t0))
            if last != 9_999:
                raise RuntimeError(f"last reply was {last!r}, expected 9999")
    return [metric("calls_10k_per_s", "/s", "higher", rates)]


def broadcast_10k(quick: bool) -> Metrics:
    """10,000 ``broadcast`` messages to a one-actor mesh, then one barrier ``call_one``."""
    with _Procs() as p:
        _, a = p.echo({"procs": 1})
        a.barrier.call_one().get()
        rates = []
        for _ in range(2 if quick else 4):
            t0 = time.perf_counter()
            for i in range(10_000):
                a.note.broadcast(i)
            got = a.barrier.call_one().get()
            rates.append(10_000 / (time.perf_counter() - t0))
            if got != 10_000:
                raise RuntimeError(f"barrier saw {got} messages, expected 10000")
    return [metric("broadcast_10k_per_s", "/s", "higher", rates)]


def call_4procs(quick: bool) -> Metrics:
    """Latency of ``call()`` (one message to each of 4 procs, replies gathered)."""
    with _Procs() as p:
        _, m = p.echo({"gpus": 4})
        vm = m.ping.call(7).get()
        if sorted(vm.values()) != [7, 7, 7, 7]:
            raise RuntimeError(f"call() returned {vm!r}")
        lat = _per_call_us(lambda i: m.ping.call(i).get(), 50, 200 if quick else 800)
    return [metric("call_4procs_us", "us", "lower", lat)]


def tensor_16mib(quick: bool) -> Metrics:
    """16 MiB float32 tensor sent as the argument and returned; MB/s = 16 MiB / round trip."""
    import torch

    with _Procs() as p:
        _, a = p.echo({"procs": 1})
        t = torch.rand(4 * MIB, dtype=torch.float32)
        back = a.ping.call_one(t).get()
        if not torch.equal(back, t):
            raise RuntimeError("tensor came back different")
        lat = _per_call_us(lambda i: a.ping.call_one(t).get(), 2, 8 if quick else 25)
    nbytes = t.numel() * t.element_size()
    return [
        metric("tensor_16mib_rtt_ms", "ms", "lower", [x / 1e3 for x in lat]),
        metric("tensor_16mib_MBps", "MB/s", "higher", [nbytes / x for x in lat]),
    ]


def spawn_4procs(quick: bool) -> Metrics:
    """Seconds from ``spawn_procs(per_host={"gpus": 4})`` until each of 4 actors answered once.

    The first spawn in a fresh process is the headline (what a user's script pays); later ones
    show the warm cost. ``import_s`` is the ``monarch.actor`` import time in this process.
    """
    this_host, Echo, import_s = _import_actor_api()
    samples = []
    for _ in range(2 if quick else 4):
        t0 = time.perf_counter()
        pm = this_host().spawn_procs(per_host={"gpus": 4})
        try:
            m = pm.spawn("echo", Echo)
            vm = m.ping.call(1).get()
            samples.append(time.perf_counter() - t0)
            if len(list(vm.values())) != 4:
                raise RuntimeError(f"call() returned {vm!r}")
        finally:
            _stop(pm)
    return [
        metric("spawn_4procs_s", "s", "lower", samples[:1]),
        metric("spawn_4procs_again_s", "s", "lower", samples[1:]),
        metric("import_actor_api_s", "s", "lower", [import_s]),
    ]


def payload_sweep(quick: bool) -> Metrics:
    """``call_one`` round trip against payload size (``bytes``, echoed: it travels both ways)."""
    out = []
    with _Procs() as p:
        _, a = p.echo({"procs": 1})
        for i in range(20):
            a.ping.call_one(i).get()
        for size in PAYLOAD_SIZES:
            payload = b"\x01" * size
            iters = max(4 if quick else 10, min(100 if quick else 400, (1 << 30) // (size * 64)))
            back = a.ping.call_one(payload).get()
            if len(back) != size:
                raise RuntimeError("payload came back with a wrong size")

            def echo(i: int, payload: bytes = payload) -> Any:
                return a.ping.call_one(payload).get()

            lat = _per_call_us(echo, 1, iters)
            out.append(
                metric(f"payload_rtt_us/{size}", "us", "lower", lat, group="payload_rtt_us", x=size)
            )
    return out


def mesh_sweep(quick: bool) -> Metrics:
    """Latency of one ``call()`` reaching N actors and gathering N replies.

    N = 1 is one actor on one proc; N >= 4 uses 4 procs and N / 4 actor meshes spawned on them,
    called concurrently (all ``call()`` futures created, then all awaited).
    """
    out = []
    with _Procs() as p:
        _, one = p.echo({"procs": 1}, "echo1")
        pm4 = p.spawn({"procs": SWEEP_PROCS})
        meshes: list[Any] = []
        for n in MESH_SIZES:
            if n == 1:
                group = [one]
            else:
                while len(meshes) * SWEEP_PROCS < n:
                    meshes.append(pm4.spawn(f"echo_{len(meshes)}", p.Echo))
                group = meshes[: n // SWEEP_PROCS]

            def call_all(i: int, group: list[Any] = group) -> None:
                futs = [m.ping.call(i) for m in group]
                for f in futs:
                    f.get()

            lat = _per_call_us(call_all, 5, 20 if quick else 60)
            out.append(metric(f"mesh_call_us/{n}", "us", "lower", lat, group="mesh_call_us", x=n))
    return out


# --------------------------------------------------------------------------- raw workloads


def raw_uds(quick: bool) -> Metrics:
    from benchmarks import _raw

    return _raw.uds(quick)


def raw_memory(quick: bool) -> Metrics:
    from benchmarks import _raw

    return _raw.memcpy(quick) + _raw.vm_readv(quick)


def raw_spawn(quick: bool) -> Metrics:
    from benchmarks import _raw

    return _raw.spawn_pythons(quick)


ACTOR_WORKLOADS: dict[str, Callable[[bool], Metrics]] = {
    "call_one": call_one,
    "calls_10k": calls_10k,
    "broadcast_10k": broadcast_10k,
    "call_4procs": call_4procs,
    "tensor_16mib": tensor_16mib,
    "spawn_4procs": spawn_4procs,
    "payload_sweep": payload_sweep,
    "mesh_sweep": mesh_sweep,
}
RAW_WORKLOADS: dict[str, Callable[[bool], Metrics]] = {
    "raw_uds": raw_uds,
    "raw_memory": raw_memory,
    "raw_spawn": raw_spawn,
}
WORKLOADS = {**ACTOR_WORKLOADS, **RAW_WORKLOADS}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.workloads")
    parser.add_argument("name", choices=sorted(WORKLOADS))
    parser.add_argument("--quick", action="store_true", help="fewer iterations")
    parser.add_argument("--json", action="store_true", help=f"print '{RESULT_PREFIX}<json>' last")
    args = parser.parse_args(argv)
    impl = _implementation() if args.name in ACTOR_WORKLOADS else "raw"
    t0 = time.perf_counter()
    try:
        metrics = WORKLOADS[args.name](args.quick)
        result: dict[str, Any] = {"workload": args.name, "implementation": impl, "metrics": metrics}
    except Exception as exc:
        traceback.print_exc()
        result = {
            "workload": args.name,
            "implementation": impl,
            "metrics": [],
            "error": f"{type(exc).__name__}: {exc}",
        }
    result["elapsed_s"] = time.perf_counter() - t0
    result["pid"] = os.getpid()
    if args.json:
        print(RESULT_PREFIX + json.dumps(result), flush=True)
    else:
        for m in result["metrics"]:
            print(f"{m['name']:40s} {m['value']:14.2f} {m['unit']}  (n={m['n']})")
        if "error" in result:
            print("error:", result["error"])
    sys.stdout.flush()
    return 0 if "error" not in result else 1


if __name__ == "__main__":
    raise SystemExit(main())
