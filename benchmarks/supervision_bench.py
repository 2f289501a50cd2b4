"""Supervision benchmarks: crash detection latency and a no-loss soak.

``python -m benchmarks.supervision_bench [--kills 20] [--sends 1000000]``

1. Crash detection: a call is in flight to an actor whose proc is then killed with SIGKILL;
   we time from ``kill()`` to the caller's ``SupervisionError``. Median over ``--kills`` kills
   (Monarch takes ~10 s here, Ray ~12 ms; the raw limit, socket EOF, ~0.9 ms).
2. Mixed soak: ``--sends`` endpoint invocations from the client to a 2x2 mesh of 4 actors on
   4 procs, 25 % each of ``call_one`` (to one actor), ``broadcast``, ``call`` and ``stream`` (to
   whole-mesh, row, strided-column and one-actor slices); every actor must receive exactly the
   sequence of message ids it was sent (no loss, no duplicate, sender's order), and every reply
   must carry its message's id. 1,000,000 sends are about 1.9 million deliveries.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import statistics
import time
from typing import Any

from monarch.actor import Actor, SupervisionError, context, endpoint, this_host
from rich.console import Console
from rich.table import Table


class Target(Actor):
    @endpoint
    def pid(self) -> int:
        return os.getpid()

    @endpoint
    def block(self, seconds: float) -> None:
        time.sleep(seconds)


def crash_detection(kills: int) -> list[float]:
    """Milliseconds from SIGKILL to SupervisionError in an in-flight call, per kill."""
    out = []
    for _ in range(kills):
        procs = this_host().spawn_procs(per_host={"gpus": 1})
        t = procs.spawn("victim", Target)
        pid = t.pid.call_one().get(timeout=30)
        fut = t.block.call_one(60)
        time.sleep(0.05)
        t0 = time.perf_counter()
        os.kill(pid, signal.SIGKILL)
        try:
            fut.get(timeout=30)
        except SupervisionError:
            out.append((time.perf_counter() - t0) * 1e3)
        procs.stop().get(timeout=10)
    return out


SOAK_SLICES: tuple[dict[str, int], ...] = (
    {},  # all 4 actors
    {"hosts": 0},  # ranks 0, 1
    {"hosts": 1},  # ranks 2, 3
    {"gpus": 0},  # ranks 0, 2 (strided)
    {"gpus": 1},  # ranks 1, 3 (strided)
    {"hosts": 1, "gpus": 0},  # rank 2 alone
)
"""The slices that ``broadcast``, ``call`` and ``stream`` messages of the soak go to (a 2x2 mesh)."""

SOAK_KINDS = ("call_one", "broadcast", "call", "stream")
"""The soak's kinds of send, in the order it cycles through them: 25 % of the sends each."""

_HASH_MUL = 1_000_003
_HASH_MOD = (1 << 61) - 1


def _ranks(sl: dict[str, int]) -> list[int]:
    """Spawn ranks of a slice of the soak's ``{"hosts": 2, "gpus": 2}`` mesh (row-major)."""
    hosts = [sl["hosts"]] if "hosts" in sl else [0, 1]
    gpus = [sl["gpus"]] if "gpus" in sl else [0, 1]
    return [h * 2 + g for h in hosts for g in gpus]


class SoakTarget(Actor):
    """Records every soak message: how many of each kind, whether ids only ever grew, and a hash
    of the ids in arrival order (so the sender can check the exact sequence it sent)."""

    def __init__(self) -> None:
        self.last = -1
        self.errors = 0
        self.digest = 0
        self.kinds = [0, 0, 0, 0]

    @endpoint
    def push(self, kind: int, mid: int) -> int:
        if mid <= self.last:
            self.errors += 1  # a duplicate or an out-of-order delivery
        self.last = mid
        self.digest = (self.digest * _HASH_MUL + mid) % _HASH_MOD
        self.kinds[kind] += 1
        return mid

    @endpoint
    def tally(self) -> tuple[int, list[int], int, int]:
        """(spawn rank, deliveries per kind, order errors, digest of the ids in arrival order)."""
        return context().actor_instance.rank.rank, list(self.kinds), self.errors, self.digest


def soak(
    sends: int, *, seed: int = 0, window: int = 2000, timeout_s: float = 120.0
) -> dict[str, Any]:
    """Mixed soak from one sender (the client) to 4 actors on 4 procs (a 2x2 mesh).

    ``sends`` endpoint invocations cycle through :data:`SOAK_KINDS` (25 % each): ``call_one`` to
    one actor (a seeded random choice of the 4), and ``broadcast`` / ``call`` / ``stream`` to a
    seeded random choice of :data:`SOAK_SLICES`. Every message carries a fresh id, increasing in
    send order. Each actor checks that ids only grow (no duplicate, no reordering) and hashes
    the ids in arrival order; the client computes the same hash over the ids it sent to each
    actor, so equal hashes and counts mean each actor got exactly the sequence it was sent.
    Every reply (``call_one``, each rank of ``call`` and ``stream``) must carry its message's
    id, one reply per target rank. At most ``window`` calls wait for replies at a time.

    Returns a dict: ``sends`` and ``deliveries`` per kind, ``expected``/``received`` per actor
    (deliveries per kind, digest), ``order_errors``, ``reply_errors``, ``seconds``, ``rate``
    (deliveries per second).

    Raises:
        SupervisionError, CallTimeout: an actor failed, or a reply took over ``timeout_s`` s.
    """
    rng = random.Random(seed)
    procs = this_host().spawn_procs(per_host={"hosts": 2, "gpus": 2})
    try:
        mesh: Any = procs.spawn("soak", SoakTarget)  # typed as the actor class, as in Monarch
        mesh.tally.call().get(timeout=timeout_s)
        ones = [mesh.slice(hosts=r // 2, gpus=r % 2).push for r in range(4)]
        slices = [(mesh.slice(**sl).push.with_timeout(timeout_s), _ranks(sl)) for sl in SOAK_SLICES]
        exp_kinds = [[0, 0, 0, 0] for _ in range(4)]
        exp_digest = [0, 0, 0, 0]
        sends_per_kind = [0, 0, 0, 0]
        reply_errors = 0
        pending: list[tuple[int, int, Any, int]] = []

        def drain() -> int:
            bad = 0
            for kind, mid, fut, n in pending:
                if kind == 0:
                    got = [fut.get(timeout=timeout_s)]
                elif kind == 2:
                    got = list(fut.get(timeout=timeout_s).values())
                else:
                    got = [f.get() for f in fut]
                bad += len(got) != n or any(g != mid for g in got)
            pending.clear()
            return bad

        t0 = time.perf_counter()
        for mid in range(sends):
            kind = mid % 4
            if kind == 0:
                r = rng.randrange(4)
                targets = [r]
                pending.append((0, mid, ones[r].call_one(0, mid), 1))
            else:
                ep, targets = slices[rng.randrange(len(slices))]
                if kind == 1:
                    ep.broadcast(1, mid)
                elif kind == 2:
                    pending.append((2, mid, ep.call(2, mid), len(targets)))
                else:
                    pending.append((3, mid, ep.stream(3, mid), len(targets)))
            sends_per_kind[kind] += 1
            for r in targets:
                exp_kinds[r][kind] += 1
                exp_digest[r] = (exp_digest[r] * _HASH_MUL + mid) % _HASH_MOD
            if len(pending) >= window:
                reply_errors += drain()
        reply_errors += drain()
        # per-sender FIFO: this call is handled after every message above, broadcasts included
        tallies = sorted(mesh.tally.call().get(timeout=timeout_s).values())
        elapsed = time.perf_counter() - t0
        deliveries = [sum(k[i] for k in exp_kinds) for i in range(4)]
        return {
            "sends": dict(zip(SOAK_KINDS, sends_per_kind)),
            "deliveries": dict(zip(SOAK_KINDS, deliveries)),
            "expected": [(exp_kinds[r], exp_digest[r]) for r in range(4)],
            "received": [(kinds, digest) for _, kinds, _, digest in tallies],
            "ranks": [rank for rank, _, _, _ in tallies],
            "order_errors": sum(e for _, _, e, _ in tallies),
            "reply_errors": reply_errors,
            "seconds": elapsed,
            "rate": sum(deliveries) / elapsed,
        }
    finally:
        procs.stop().get(timeout=30)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument(
        "--sends", type=int, default=1_000_000, help="soak sends, 25%% of each kind (0: no soak)"
    )
    ns = ap.parse_args()
    import monarch.actor

    # the kills are deliberate: record them instead of the default report-and-exit
    monarch.actor.unhandled_fault_hook = lambda failure: None
    console = Console()
    table = Table(title="supervision")
    table.add_column("metric")
    table.add_column("value", justify="right")
    if ns.kills:
        ms = crash_detection(ns.kills)
        table.add_row("SIGKILL -> SupervisionError, median (ms)", f"{statistics.median(ms):.1f}")
        table.add_row("  min / max (ms)", f"{min(ms):.1f} / {max(ms):.1f}")
        table.add_row("  kills detected", f"{len(ms)}/{ns.kills}")
    if ns.sends:
        r = soak(ns.sends)
        for kind in SOAK_KINDS:
            table.add_row(
                f"soak: {kind} sends / deliveries",
                f"{r['sends'][kind]:,} / {r['deliveries'][kind]:,}",
            )
        table.add_row("soak: out-of-order or duplicate deliveries", str(r["order_errors"]))
        table.add_row("soak: wrong or missing replies", str(r["reply_errors"]))
        table.add_row(
            "soak: every actor got exactly what was sent", str(r["expected"] == r["received"])
        )
        table.add_row("soak: rate (deliveries/s)", f"{r['rate']:,.0f}")
    console.print(table)


if __name__ == "__main__":
    main()
