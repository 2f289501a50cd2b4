"""The owner's registry of memory regions: leases, drops and releases, in this process."""

from __future__ import annotations

import threading

import pytest
from monarch._core.errors import RDMAError
from monarch.rdma._memory import local_memory
from monarch.rdma._registry import Registry

pytestmark = pytest.mark.rdma


def _wait_released(released: threading.Event) -> bool:
    return released.wait(timeout=10)


def test_a_leased_region_is_released_only_after_its_lease_ends():
    reg = Registry()
    region = reg.register(local_memory(memoryview(bytearray(64))))
    lease = reg.lease(region.region_id, region.key, 0, 64, write=True)
    revoked = threading.Event()
    reg._regions[region.region_id]._revokers[10**9] = revoked.set  # a second holder's revoke
    released = threading.Event()
    reg.drop(region.region_id, region.key, 0.0, lambda r: released.set(), wait_s=0.05)
    assert revoked.is_set(), "holders of the region were not revoked at the drop"
    assert not released.wait(timeout=0.2), "memory released while a lease still held it"
    assert region.memory.size == 64
    lease.release()
    assert _wait_released(released)
    assert region.memory.size == 0 and region.memory.keepalive is None


def test_a_dropped_region_refuses_new_leases_at_once():
    reg = Registry()
    region = reg.register(local_memory(memoryview(bytearray(64))))
    reg.drop(region.region_id, region.key, 5.0, lambda r: None)
    with pytest.raises(RDMAError, match="dropped or never existed"):
        reg.lease(region.region_id, region.key, 0, 8, write=False)


def test_lease_checks_bounds_and_writability():
    reg = Registry()
    region = reg.register(local_memory(memoryview(bytearray(64)).toreadonly()))
    with pytest.raises(RDMAError, match="out of bounds"):
        reg.lease(region.region_id, region.key, 60, 8, write=False)
    with pytest.raises(RDMAError, match="read-only"):
        reg.lease(region.region_id, region.key, 0, 8, write=True)
    with pytest.raises(RDMAError, match="wrong key"):
        reg.lease(region.region_id, region.key ^ 2, 0, 8, write=False)


def test_many_drops_start_at_most_one_release_thread():
    reg = Registry()
    regions = [reg.register(local_memory(memoryview(bytearray(16)))) for _ in range(50)]
    before = threading.active_count()
    for region in regions:
        reg.drop(region.region_id, region.key, 5.0, lambda r: None)
    assert threading.active_count() <= before + 1
    assert reg.dropped == 50


def test_drop_releases_after_the_grace_period_without_any_lease():
    reg = Registry()
    region = reg.register(local_memory(memoryview(bytearray(16))))
    released = threading.Event()
    reg.drop(region.region_id, region.key, 0.05, lambda r: released.set())
    assert _wait_released(released)
    assert reg.dropped == 0
