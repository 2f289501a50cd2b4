"""TLS vs plain TCP on this machine: ``python -m benchmarks.tls_bench [--calls N] [--rounds N]``.

For each of ``plain`` (cluster token only) and ``tls`` (mutual TLS + the token inside it), in the
same run: a host agent (``monarch host serve``) on 127.0.0.1 with those settings, a fresh client
process that attaches to it (``attach_to_workers`` with ``ca`` / ``private_key`` for TLS), spawns
one proc there and times, one call at a time, ``call_one`` round trips of a small argument and
round trips of 16 MiB of bytes; medians. Every link involved (client <-> agent, client <-> proc)
is TCP, so the difference is the cost of TLS. Certificates are made with the ``openssl`` command
in a temporary folder. Prints one table and, last, ``BENCH-RESULT <json>``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "tls-bench-token-0123456789abcdef"
MIB = 1 << 20


def _child(addr: str, calls: int, rounds: int, tls_dir: str) -> None:
    from monarch.actor import attach_to_workers, enable_transport, shutdown_context

    from benchmarks._actors import Echo

    enable_transport("tcp://127.0.0.1:0")
    if tls_dir:
        d = Path(tls_dir)
        hm = attach_to_workers(
            workers=[addr], ca=d / "ca.pem", private_key=(d / "b.pem", d / "b.key")
        )
    else:
        hm = attach_to_workers(workers=[addr], ca="trust_all_connections")
    hm.initialized.get(30.0)
    echo = hm.spawn_procs(per_host={"gpus": 1}).spawn("echo", Echo)
    for i in range(200):
        echo.ping.call_one(i).get(10.0)
    lat = []
    for i in range(calls):
        t = time.perf_counter()
        echo.ping.call_one(i).get(10.0)
        lat.append(time.perf_counter() - t)
    blob = os.urandom(16 * MIB)
    rt = []
    for _ in range(rounds):
        t = time.perf_counter()
        back = echo.ping.call_one(blob).get(60.0)
        rt.append(time.perf_counter() - t)
        if len(back) != len(blob):
            raise RuntimeError("16 MiB round trip came back short")
    print(
        json.dumps(
            {"call_one_us": statistics.median(lat) * 1e6, "rt16_ms": statistics.median(rt) * 1e3}
        ),
        flush=True,
    )
    shutdown_context().get(30.0)


def _env(tls_dir: str | None, leaf: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MONARCH_")}
    env["MONARCH_CLUSTER_TOKEN"] = TOKEN
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    if tls_dir and leaf:
        d = Path(tls_dir)
        env.update(
            {
                "MONARCH_TLS_CA": str(d / "ca.pem"),
                "MONARCH_TLS_CERT": str(d / f"{leaf}.pem"),
                "MONARCH_TLS_KEY": str(d / f"{leaf}.key"),
            }
        )
    return env


def _measure(tls_dir: str, calls: int, rounds: int) -> dict[str, float]:
    argv = [
        sys.executable,
        "-m",
        "monarch.cli",
        "host",
        "serve",
        "--listen",
        "tcp://127.0.0.1:0",
        "--log-level",
        "WARNING",
    ]
    agent = subprocess.Popen(
        argv, stdout=subprocess.PIPE, text=True, env=_env(tls_dir, "a"), cwd=ROOT
    )
    try:
        assert agent.stdout is not None
        line = agent.stdout.readline()
        if not line.startswith("monarch host agent listening on "):
            raise RuntimeError(f"the agent did not start: {line!r}")
        addr = line.split()[-1]
        child = [
            sys.executable,
            "-m",
            "benchmarks.tls_bench",
            "--child",
            addr,
            "--calls",
            str(calls),
            "--rounds",
            str(rounds),
            "--tls-dir",
            tls_dir,
        ]
        out = subprocess.run(
            child, capture_output=True, text=True, env=_env(None, ""), cwd=ROOT, timeout=300
        )
        if out.returncode != 0:
            raise RuntimeError(f"the client failed:\n{out.stderr[-4000:]}")
        return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]
    finally:
        agent.kill()
        agent.wait(10.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--calls", type=int, default=2000, help="call_one round trips timed (default 2000)"
    )
    ap.add_argument("--rounds", type=int, default=10, help="16 MiB round trips timed (default 10)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--tls-dir", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _child(args.child, args.calls, args.rounds, args.tls_dir)
        return
    sys.path.insert(0, str(ROOT))
    from tests.runtime.tls_certs import make_pki

    with tempfile.TemporaryDirectory(prefix="monarch-tls-bench-") as tmp:
        pki = str(make_pki(Path(tmp)))
        results = {
            "plain": _measure("", args.calls, args.rounds),
            "tls": _measure(pki, args.calls, args.rounds),
        }
    print(f"{'':8} {'call_one (us)':>14} {'16 MiB RT (ms)':>15} {'16 MiB RT (MiB/s)':>18}")
    for name, r in results.items():
        print(
            f"{name:8} {r['call_one_us']:14.1f} {r['rt16_ms']:15.1f} {2 * 16 / (r['rt16_ms'] / 1e3):18.0f}"
        )
    print("BENCH-RESULT " + json.dumps({"workload": "tls_bench", "results": results}))


if __name__ == "__main__":
    main()
