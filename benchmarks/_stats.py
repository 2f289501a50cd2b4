"""Summaries of timing samples (stdlib only: runs under either interpreter)."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any


def quantile(samples: Sequence[float], q: float) -> float:
    """Linear-interpolated quantile ``q`` in [0, 1] of a non-empty sequence."""
    xs = sorted(samples)
    if len(xs) == 1:
        return xs[0]
    pos = q * (len(xs) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def metric(
    name: str,
    unit: str,
    better: str,
    samples: Sequence[float],
    *,
    group: str | None = None,
    x: float | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """One measured quantity: its median plus spread, as the workload protocol carries it.

    Args:
        name: unique metric key, e.g. ``call_one_rtt_us``.
        unit: unit of ``samples`` (``us``, ``s``, ``/s``, ``MB/s``, ``GB/s``).
        better: ``"lower"`` or ``"higher"``.
        samples: raw samples from this process (per call, or per repetition).
        group: sweep name when the metric is one point of a curve.
        x: the sweep's x value (bytes, actors) for that point.
    """
    if not samples:
        raise ValueError(f"no samples for {name}")
    out: dict[str, Any] = {
        "name": name,
        "unit": unit,
        "better": better,
        "value": statistics.median(samples),
        "p10": quantile(samples, 0.1),
        "p90": quantile(samples, 0.9),
        "n": len(samples),
    }
    if group is not None:
        out["group"] = group
        out["x"] = x
    out.update(extra)
    return out
