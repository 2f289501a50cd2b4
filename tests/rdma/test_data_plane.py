"""The RDMA data plane between real processes, without actors: cma, tcp and (where a verbs
device exists, e.g. in the QEMU guest) ibverbs. The owner is ``rdma_owner_proc.py`` in a subprocess;
this test process is the reader/writer."""

from __future__ import annotations

import dataclasses
import os
import pickle
import signal
import subprocess
import sys
import time

import pytest
from monarch._core.errors import RDMAError, RDMAUnavailableError
from monarch.rdma import RDMAAction, RDMABuffer, configure, is_ibverbs_available
from rdma_owner_proc import pattern

pytestmark = pytest.mark.rdma

BACKENDS = ["cma", "tcp"] + (["ibverbs"] if is_ibverbs_available() else [])
SIZE = 3 << 20  # not a multiple of the cma chunk nor of rxe's max_msg_sz


def _forged(buf: RDMABuffer, **changes: object) -> RDMABuffer:
    return RDMABuffer._from_descriptor(dataclasses.replace(buf._desc, **changes))


@pytest.mark.parametrize("rdma_backend", BACKENDS, indirect=True)
def test_read_into_copies_the_owners_bytes(owner, rdma_backend):
    _, buf = owner.register(SIZE, salt=3)
    assert buf.backend == rdma_backend
    dst = bytearray(SIZE + 10)
    buf.read_into(memoryview(dst), timeout=30).get(timeout=60)
    assert dst[:SIZE] == pattern(SIZE, 3)
    assert dst[SIZE:] == bytes(10)


@pytest.mark.parametrize("rdma_backend", BACKENDS, indirect=True)
def test_write_from_lands_in_the_owners_memory(owner, rdma_backend):
    index, buf = owner.register(SIZE, salt=3)
    buf.write_from(memoryview(pattern(SIZE, 11)), timeout=30).get(timeout=60)
    assert owner.check(index, SIZE, salt=11)


@pytest.mark.parametrize("rdma_backend", BACKENDS, indirect=True)
def test_action_batches_reads_and_writes_in_order(owner, rdma_backend):
    _, b1 = owner.register(4096, salt=1)
    i2, b2 = owner.register(8192, salt=2)
    d1 = bytearray(4096)
    action = (
        RDMAAction().read_remote(memoryview(d1), b1).write_remote(b2, memoryview(pattern(8192, 5)))
    )
    action.submit(timeout=30).get(timeout=60)
    assert d1 == pattern(4096, 1)
    assert owner.check(i2, 8192, salt=5)


@pytest.mark.parametrize("rdma_backend", BACKENDS, indirect=True)
def test_bad_key_is_refused_with_rdma_error(owner, rdma_backend):
    _, buf = owner.register(4096, salt=1)
    changes: dict[str, object] = {"key": buf._desc.key ^ 0x5A5A}
    if rdma_backend == "ibverbs":
        assert buf._desc.verbs is not None
        changes["verbs"] = dataclasses.replace(
            buf._desc.verbs, rkey=buf._desc.verbs.rkey ^ 0x5A5A00
        )
    bad = _forged(buf, **changes)
    with pytest.raises(RDMAError, match=r"key|REM_ACCESS"):
        bad.read_into(memoryview(bytearray(4096)), timeout=10).get(timeout=60)
    # the good handle still works afterwards (a failed QP is replaced)
    dst = bytearray(4096)
    buf.read_into(memoryview(dst), timeout=30).get(timeout=60)
    assert dst == pattern(4096, 1)


@pytest.mark.parametrize("rdma_backend", BACKENDS, indirect=True)
def test_access_beyond_the_region_is_refused(owner, rdma_backend):
    _, buf = owner.register(4096, salt=1)
    with pytest.raises(ValueError, match="smaller"):
        buf.read_into(memoryview(bytearray(100)))
    with pytest.raises(ValueError, match="exceeds"):
        buf.write_from(memoryview(bytearray(5000)))
    # A handle that lies about its size is refused by the owner's side (record, server, MR).
    big = _forged(buf, size=1 << 20)
    with pytest.raises(RDMAError):
        big.read_into(memoryview(bytearray(1 << 20)), timeout=10).get(timeout=60)


@pytest.mark.parametrize("rdma_backend", BACKENDS, indirect=True)
def test_drop_from_the_reader_refuses_later_transfers(owner, rdma_backend):
    configure(drop_grace_s=0.2)
    _, buf = owner.register(4096, salt=1)
    copy = pickle.loads(pickle.dumps(buf))
    buf.drop().get(timeout=30)
    buf.drop().get(timeout=30)  # twice is fine
    time.sleep(0.5)  # past the grace period: the MR is deregistered too
    with pytest.raises(RDMAError, match=r"dropped|no such|REM_ACCESS"):
        copy.read_into(memoryview(bytearray(4096)), timeout=10).get(timeout=60)


@pytest.mark.parametrize("rdma_backend", BACKENDS, indirect=True)
def test_drop_in_the_owner_refuses_later_transfers(owner, rdma_backend):
    index, buf = owner.register(4096, salt=1)
    owner.ask(op="drop", index=index)
    with pytest.raises(RDMAError):
        buf.write_from(memoryview(bytearray(16)), timeout=10).get(timeout=60)


@pytest.mark.parametrize("rdma_backend", ["cma", "tcp"], indirect=True)
def test_dead_owner_gives_rdma_error_without_hanging(own_owner, rdma_backend):
    owner = own_owner
    _, buf = owner.register(4096, salt=1)
    buf.read_into(memoryview(bytearray(4096)), timeout=10).get(timeout=30)  # connection is pooled
    owner.proc.kill()
    owner.proc.wait(timeout=10)
    start = time.monotonic()
    with pytest.raises(RDMAError, match=r"exited|gone|failed|reach"):
        buf.read_into(memoryview(bytearray(4096)), timeout=10).get(timeout=30)
    assert time.monotonic() - start < 5


@pytest.mark.parametrize("rdma_backend", [b for b in BACKENDS if b != "tcp"], indirect=True)
def test_one_sided_read_and_write_work_while_the_owner_is_stopped(owner, rdma_backend):
    index, buf = owner.register(SIZE, salt=3)
    dst = bytearray(SIZE)
    buf.read_into(memoryview(dst[:16] + bytearray(SIZE - 16)), timeout=30).get(
        timeout=60
    )  # warm up
    os.kill(owner.pid, signal.SIGSTOP)
    try:
        buf.read_into(memoryview(dst), timeout=30).get(timeout=60)
        buf.write_from(memoryview(pattern(SIZE, 9)), timeout=30).get(timeout=60)
    finally:
        os.kill(owner.pid, signal.SIGCONT)
    assert dst == pattern(SIZE, 3)
    assert owner.check(index, SIZE, salt=9)


@pytest.mark.parametrize("rdma_backend", ["tcp"], indirect=True)
def test_tcp_read_from_a_stopped_owner_times_out_with_rdma_error(owner, rdma_backend):
    _, buf = owner.register(4096, salt=3)
    os.kill(owner.pid, signal.SIGSTOP)
    try:
        with pytest.raises(RDMAError, match="timed out"):
            buf.read_into(memoryview(bytearray(4096)), timeout=1).get(timeout=30)
    finally:
        os.kill(owner.pid, signal.SIGCONT)


def test_cma_refuses_a_handle_whose_owner_pid_names_another_process(owner):
    _, buf = owner.register(4096, salt=1)
    with pytest.raises(RDMAError, match="another process"):
        _forged(buf, start_time=buf._desc.start_time + 1).read_into(
            memoryview(bytearray(4096))
        ).get(10)


@pytest.mark.parametrize("rdma_backend", ["cma", "tcp"], indirect=True)
def test_read_only_buffer_refuses_writes(owner, rdma_backend):
    _, buf = owner.register(4096, salt=1, readonly=True)
    with pytest.raises(ValueError, match="read-only"):
        buf.write_from(memoryview(bytearray(16)))
    with pytest.raises(RDMAError, match="read-only"):
        _forged(buf, writable=True).write_from(memoryview(bytearray(16)), timeout=10).get(30)
    dst = bytearray(4096)
    buf.read_into(memoryview(dst)).get(30)
    assert dst == pattern(4096, 1)


def test_handle_pickles_small_and_keeps_its_fields(owner):
    _, buf = owner.register(4096, salt=1)
    data = pickle.dumps(buf)
    assert len(data) < 256
    copy = pickle.loads(data)
    assert copy.size == 4096 and copy.size() == 4096 and copy.owner == buf.owner
    assert copy._desc == buf._desc


@pytest.mark.skipif(is_ibverbs_available(), reason="a verbs device exists here")
def test_ibverbs_without_a_device_raises_unavailable_on_first_use(owner):
    configure(backend="ibverbs")
    try:
        _, buf = owner.register(4096, salt=1)
        with pytest.raises(RDMAUnavailableError):
            buf.read_into(memoryview(bytearray(4096))).get(10)
    finally:
        configure(backend="auto")


def test_importing_monarch_rdma_imports_neither_torch_nor_pyverbs():
    code = "import sys, monarch.rdma; print(sorted(m for m in ('torch', 'pyverbs') if m in sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "[]"


def test_tensors_register_and_read_when_one_dimensional():
    torch = pytest.importorskip("torch")
    src = torch.arange(1000, dtype=torch.float32)
    with pytest.raises(ValueError, match="1-D"):
        RDMABuffer(src.view(10, 100))
    buf = RDMABuffer(src.view(torch.uint8).flatten())
    dst = torch.zeros(1000, dtype=torch.float32)
    buf.read_into(dst.view(torch.uint8).flatten()).get(10)
    assert torch.equal(src, dst)
    buf.drop().get(10)


def test_owner_on_another_host_without_verbs_falls_back_to_tcp_with_a_warning(owner, monkeypatch):
    from monarch.rdma import RDMATcpFallbackWarning, _engine

    monkeypatch.setattr(_engine, "_warned_tcp", False)
    _, buf = owner.register(4096, salt=1)
    remote = _forged(buf, host="another-boot-id/1")
    with pytest.warns(RDMATcpFallbackWarning):
        assert remote.backend == "tcp"
    dst = bytearray(4096)
    remote.read_into(memoryview(dst)).get(30)
    assert dst == pattern(4096, 1)
