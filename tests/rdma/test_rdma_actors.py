"""``RDMABuffer`` with real actors: handles returned from and passed to endpoints, reads and
writes from other procs, drop, and control requests (queue-pair setup, drops) over actor
messages to the owner proc's RDMA manager actor."""

from __future__ import annotations

import pytest
from monarch._core.errors import ActorError, RDMAError
from monarch.actor import Actor, endpoint, this_host
from monarch.rdma import RDMAAction, RDMABuffer, is_ibverbs_available
from monarch.rdma._manager import manager_of

pytestmark = pytest.mark.rdma

SIZE = 1 << 20


def pattern(size: int, salt: int) -> bytes:
    block = bytes((i * 7 + salt) % 251 for i in range(4016))
    return (block * (size // len(block) + 1))[:size]


class Owner(Actor):
    def __init__(self) -> None:
        self.mem = bytearray(pattern(SIZE, 3))
        self.buf = RDMABuffer(memoryview(self.mem))

    @endpoint
    def handle(self) -> RDMABuffer:
        return self.buf

    @endpoint
    def matches(self, salt: int) -> bool:
        return bytes(self.mem) == pattern(SIZE, salt)

    @endpoint
    def drop(self) -> None:
        self.buf.drop().get(timeout=30)


class SyncWorker(Actor):
    @endpoint
    def pull(self, buf: RDMABuffer) -> bytes:
        dst = bytearray(buf.size)
        buf.read_into(memoryview(dst)).get(timeout=30)
        return bytes(dst)

    @endpoint
    def push(self, buf: RDMABuffer, salt: int) -> None:
        buf.write_from(memoryview(pattern(buf.size, salt))).get(timeout=30)

    @endpoint
    def drop(self, buf: RDMABuffer) -> None:
        buf.drop().get(timeout=30)


class AsyncWorker(Actor):
    @endpoint
    async def pull_and_push(self, buf: RDMABuffer, salt: int) -> bytes:
        dst = bytearray(buf.size)
        await RDMAAction().read_remote(memoryview(dst), buf).submit(timeout=30)
        await buf.write_from(memoryview(pattern(buf.size, salt)), timeout=30)
        return bytes(dst)


def _spawn_meshes(owner_env=None, worker_env=None):
    owner_procs = this_host().spawn_procs(per_host={"gpus": 1}, env=owner_env)
    try:
        worker_procs = this_host().spawn_procs(per_host={"gpus": 2}, env=worker_env)
    except BaseException:
        owner_procs.stop().get(timeout=30)
        raise
    return owner_procs, worker_procs


@pytest.fixture
def meshes(request):
    owner_env, worker_env = getattr(request, "param", (None, None))
    owner_procs, worker_procs = _spawn_meshes(owner_env, worker_env)
    try:
        yield owner_procs, worker_procs
    finally:
        for procs in (owner_procs, worker_procs):
            procs.stop().get(timeout=30)


ACTOR_CONTROL = ({"MONARCH_RDMA_CONTROL": "actor"}, None)
IBVERBS = (None, {"MONARCH_RDMA_BACKEND": "ibverbs"})
GUEST_S = 300  # verbs devices exist here only in the QEMU guest, where procs take ~15 s to start


def test_handle_returned_by_an_endpoint_reads_and_writes_from_other_procs(meshes):
    owner_procs, worker_procs = meshes
    owner = owner_procs.spawn("owner", Owner)
    workers = worker_procs.spawn("workers", SyncWorker)
    buf = owner.handle.call_one().get(timeout=30)
    assert buf.size == SIZE and buf.owner.startswith("owner")
    pulled = workers.pull.call(buf).get(timeout=60)
    assert all(data == pattern(SIZE, 3) for _, data in pulled.items())
    workers.slice(gpus=1).push.call_one(buf, 9).get(timeout=60)
    assert owner.matches.call_one(9).get(timeout=30)
    # the client reads too
    dst = bytearray(SIZE)
    buf.read_into(memoryview(dst)).get(timeout=30)
    assert dst == pattern(SIZE, 9)


def test_async_endpoints_await_rdma_futures(meshes):
    owner_procs, worker_procs = meshes
    owner = owner_procs.spawn("owner", Owner)
    worker = worker_procs.slice(gpus=0).spawn("worker", AsyncWorker)
    buf = owner.handle.call_one().get(timeout=30)
    assert worker.pull_and_push.call_one(buf, 5).get(timeout=60) == pattern(SIZE, 3)
    assert owner.matches.call_one(5).get(timeout=30)


def test_transfers_after_the_owner_drops_fail_with_rdma_error(meshes):
    owner_procs, worker_procs = meshes
    owner = owner_procs.spawn("owner", Owner)
    worker = worker_procs.slice(gpus=0).spawn("worker", SyncWorker)
    buf = owner.handle.call_one().get(timeout=30)
    owner.drop.call_one().get(timeout=30)
    with pytest.raises(RDMAError, match="dropped"):
        buf.read_into(memoryview(bytearray(SIZE))).get(timeout=30)
    with pytest.raises(ActorError, match="RDMAError"):
        worker.pull.call_one(buf).get(timeout=30)


@pytest.mark.parametrize("meshes", [ACTOR_CONTROL], indirect=True, ids=["actor-control"])
def test_drops_from_readers_travel_to_the_owner_procs_manager_actor(meshes):
    owner_procs, worker_procs = meshes
    owner = owner_procs.spawn("owner", Owner)
    worker = worker_procs.slice(gpus=0).spawn("worker", SyncWorker)
    buf = owner.handle.call_one().get(timeout=30)
    manager = manager_of(buf._desc)
    assert manager is not None  # the handle names the owner proc's manager
    assert worker.pull.call_one(buf).get(timeout=60) == pattern(SIZE, 3)
    worker.drop.call_one(buf).get(timeout=30)  # from another proc: a message to the manager
    buf.drop().get(timeout=30)  # from the client, again: dropping twice is fine
    assert manager.stats.call_one().get(timeout=30) == {"connects": 0, "drops": 2}
    with pytest.raises(ActorError, match="dropped"):
        worker.pull.call_one(buf).get(timeout=30)


@pytest.mark.skipif(
    not is_ibverbs_available(), reason="no ibverbs device (see test_guest_ibverbs.py)"
)
@pytest.mark.parametrize("meshes", [IBVERBS], indirect=True, ids=["ibverbs"])
def test_ibverbs_queue_pairs_are_set_up_over_actor_messages(meshes):
    owner_procs, worker_procs = meshes
    owner = owner_procs.spawn("owner", Owner)
    workers = worker_procs.spawn("workers", SyncWorker)
    buf = owner.handle.call_one().get(timeout=GUEST_S)
    assert buf._desc.verbs is not None
    manager = manager_of(buf._desc)
    assert manager is not None  # an owner with verbs in the actor runtime has a manager
    pulled = workers.pull.call(buf).get(timeout=GUEST_S)
    assert all(data == pattern(SIZE, 3) for _, data in pulled.items())
    workers.slice(gpus=1).push.call_one(buf, 9).get(timeout=GUEST_S)
    assert owner.matches.call_one(9).get(timeout=GUEST_S)
    # one RC queue pair per reader proc, each set up by a connect_qp message
    assert manager.stats.call_one().get(timeout=GUEST_S)["connects"] == 2


@pytest.mark.parametrize("meshes", [ACTOR_CONTROL], indirect=True, ids=["actor-control"])
def test_a_stopped_manager_falls_back_to_the_owners_tcp_server(meshes):
    owner_procs, _ = meshes
    owner = owner_procs.spawn("owner", Owner)
    buf = owner.handle.call_one().get(timeout=30)
    manager = manager_of(buf._desc)
    assert manager is not None
    manager.stop().get(timeout=30)
    buf.drop().get(timeout=30)  # the manager is gone: the TCP server drops it
    with pytest.raises(RDMAError, match="dropped"):
        buf.read_into(memoryview(bytearray(SIZE))).get(timeout=30)
