"""No loss under load: a soak of call_one, broadcast, call and stream (25 % each) from one sender.

Every actor must receive exactly the sequence of message ids it was sent (no loss, no duplicate,
in the sender's order), and every reply must carry its message's id. CI runs 20,000 sends (about
38,000 deliveries, ~6 s); the 1,000,000-send soak is marked ``slow``.
"""

from __future__ import annotations

from typing import Any

import pytest

from benchmarks.supervision_bench import SOAK_KINDS, soak


def _check(r: dict[str, Any], sends: int) -> None:
    assert r["sends"] == {kind: sends // 4 for kind in SOAK_KINDS}
    assert r["ranks"] == [0, 1, 2, 3]
    # each kind reached every actor (so a kind that is lost or reordered shows in the digests)
    assert all(all(n > 0 for n in kinds) for kinds, _ in r["expected"])
    assert r["order_errors"] == 0
    assert r["reply_errors"] == 0
    assert r["received"] == r["expected"]


def test_mixed_soak_of_20000_sends_every_actor_gets_exactly_what_it_was_sent_in_order() -> None:
    r = soak(20_000)
    _check(r, 20_000)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_mixed_soak_of_1000000_sends_every_actor_gets_exactly_what_it_was_sent_in_order() -> None:
    r = soak(1_000_000, timeout_s=300)
    _check(r, 1_000_000)
