"""The supervisor's record of procs stopped on purpose stays bounded in a long-lived client: a
proc that was dead already when its mesh was stopped never exits again to remove its entry."""

from __future__ import annotations

from monarch._mesh import supervision
from monarch.testing import memory_runtimes


def test_expected_exits_of_procs_dead_before_their_stop_are_bounded(monkeypatch) -> None:
    monkeypatch.setattr(supervision, "_EXPECTED_KEPT", 8)
    with memory_runtimes(0) as rts:
        sup = rts.client.supervisor
        for i in range(20):
            sup.expect_exit([f"mem:gone-{i}"])  # dead already: no exit will ever discard it
        assert len(sup.expected_exits) == 8
        assert list(sup.expected_exits) == [f"mem:gone-{i}" for i in range(12, 20)]  # newest kept
