"""The cma backend's access rules (Yama ``PR_SET_PTRACER``), its tcp fallback and its owner cache."""

from __future__ import annotations

import ctypes
import errno
import json
import os
import subprocess
import sys

import pytest
from monarch._core.errors import RDMAError
from monarch.rdma import _cma, _engine
from monarch.rdma._memory import local_memory
from rdma_owner_proc import pattern

pytestmark = pytest.mark.rdma

_ANY = ctypes.c_ulong(-1).value

_PROBE = r"""
import json, sys
from monarch.rdma import _cma, RDMABuffer
calls = []
class FakeLibc:
    def prctl(self, option, arg2, *rest):
        calls.append([int(option), int(getattr(arg2, "value", arg2))])
        return 0
_cma._libc = FakeLibc()
_cma.ptrace_scope = lambda *a: int(sys.argv[1])
buf = RDMABuffer(memoryview(bytearray(4096)))
print(json.dumps({"calls": calls, "root": getattr(_cma, "job_root", lambda: -1)()}))
"""


def _probe(scope: int) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, str(scope)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_registering_never_lets_any_process_ptrace_the_owner():
    for scope in (0, 1, 2):
        for option, arg in _probe(scope)["calls"]:
            assert not (option == 0x59616D61 and arg == _ANY), (
                f"PR_SET_PTRACER_ANY at scope {scope}"
            )


def test_at_ptrace_scope_1_the_owner_declares_only_its_job_root():
    answer = _probe(1)
    assert answer["calls"] == [[0x59616D61, answer["root"]]]
    # The child's job root is this test process's root: the topmost same-executable ancestor.
    assert answer["root"] == _cma.job_root()


def test_without_yama_or_at_scope_0_nothing_is_declared():
    assert _probe(0)["calls"] == []
    assert _cma.allow_cma_from_job(0, scope=None) is None


def test_this_machines_ptrace_scope_is_reported():
    scope = _cma.ptrace_scope()
    assert scope is None or 0 <= scope <= 3
    assert _cma.ptrace_scope("/nonexistent/ptrace_scope") is None


def test_cma_refused_by_the_kernel_falls_back_to_tcp(owner, monkeypatch):
    # Root here passes every ptrace check, so the kernel's EPERM is injected.
    _, buf = owner.register(4096, salt=5)

    def refuse(*args: object) -> None:
        raise OSError(errno.EPERM, os.strerror(errno.EPERM))

    monkeypatch.setattr(_cma, "_vm_io", refuse)
    monkeypatch.setattr(_cma, "process_vm_readv", refuse)
    monkeypatch.setattr(_engine._CMA, "_denied", {})
    assert buf.backend == "cma"
    dst = bytearray(4096)
    buf.read_into(memoryview(dst), timeout=10).get(timeout=30)
    assert dst == pattern(4096, 5)
    assert buf.backend == "tcp"


def test_forced_cma_refused_by_the_kernel_raises_rdma_error(owner, monkeypatch):
    from monarch.rdma import configure

    _, buf = owner.register(4096, salt=5)

    def refuse(*args: object) -> None:
        raise OSError(errno.EPERM, os.strerror(errno.EPERM))

    monkeypatch.setattr(_cma, "process_vm_readv", refuse)
    monkeypatch.setattr(_engine._CMA, "_denied", {})
    before = configure().backend
    configure(backend="cma")
    try:
        with pytest.raises(RDMAError, match="not permitted"):
            buf.read_into(memoryview(bytearray(4096)), timeout=10).get(timeout=30)
    finally:
        configure(backend=before)


def _pidfds() -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if "pidfd" in os.readlink(f"/proc/self/fd/{fd}"):
                count += 1
        except OSError:
            pass
    return count


def test_an_exited_owner_leaves_no_pidfd_or_cache_entry(own_owner):
    backend = _cma.CmaBackend()
    _, buf = own_owner.register(4096, salt=1)
    desc = buf._desc
    dst = bytearray(4096)
    backend.transfer(desc, 0, local_memory(memoryview(dst)).addr, 4096, False, 1e18)
    assert dst == pattern(4096, 1) and len(backend._owners) == 1
    before = _pidfds()
    own_owner.proc.kill()
    own_owner.proc.wait(timeout=10)
    with pytest.raises(RDMAError, match="exited"):
        backend.transfer(desc, 0, 0, 16, False, 1e18)
    assert len(backend._owners) == 0
    assert _pidfds() == before - 1


def test_the_owner_cache_is_bounded(owner, monkeypatch):
    monkeypatch.setattr(_cma, "MAX_OWNERS", 2)
    backend = _cma.CmaBackend()
    procs = [
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) for _ in range(3)
    ]
    try:
        from dataclasses import replace

        from monarch.rdma._descriptor import proc_start_time

        _, buf = owner.register(4096, salt=1)
        for proc in procs:
            desc = replace(buf._desc, pid=proc.pid, start_time=proc_start_time(proc.pid))
            backend._owner(desc)
        assert len(backend._owners) == 2
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(timeout=10)
