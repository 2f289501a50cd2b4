"""No loss under load: every message arrives exactly once, in per-sender order."""

from __future__ import annotations

import pytest

from benchmarks.supervision_bench import soak


@pytest.mark.slow
def test_soak_mixed_broadcast_and_call_one_arrive_exactly_once_in_order() -> None:
    r = soak(20_000)
    assert r["received"] == r["sent"] >= 20_000
    assert r["order_errors"] == 0
    assert r["expected_per_actor"] == r["received_per_actor"]
