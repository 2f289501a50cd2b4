"""The ``cma`` backend: Linux cross-memory attach (``process_vm_readv`` / ``process_vm_writev``).

Truly one-sided: the kernel copies between the two address spaces in the caller's thread; the
owner's CPU takes no part (a SIGSTOPped owner is read and written fine). Before moving data the
caller checks, without the owner's help, that

1. the owner is the same process the handle names: a pidfd opened once per owner and checked for
   start time, then polled (exited -> refused);
2. the owner's registration record still holds the handle's key, address and size (wrong key,
   dropped region -> refused).

Large transfers go in chunks with the record re-checked between them, so a drop stops a long
transfer early; the owner keeps dropped memory alive for a grace period for the last chunk.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import select
import threading
import time

from monarch._core.errors import RDMAError

from ._descriptor import Descriptor, host_identity, proc_start_time
from ._registry import FLAG_VALID, FLAG_WRITABLE, RECORD, RECORD_MAGIC

__all__ = ["CHUNK_BYTES", "CmaBackend", "process_vm_readv", "process_vm_writev"]

CHUNK_BYTES = 32 << 20  # record re-check interval; 32 MiB is ~4 ms of copying


class _IOVec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_readv = _libc.process_vm_readv
_writev = _libc.process_vm_writev
for _fn in (_readv, _writev):
    _fn.argtypes = [
        ctypes.c_int,
        ctypes.POINTER(_IOVec),
        ctypes.c_ulong,
        ctypes.POINTER(_IOVec),
        ctypes.c_ulong,
        ctypes.c_ulong,
    ]
    _fn.restype = ctypes.c_ssize_t


def _vm_io(write: bool, pid: int, local_addr: int, remote_addr: int, size: int) -> None:
    fn = _writev if write else _readv
    done = 0
    local = _IOVec()
    remote = _IOVec()
    while done < size:
        local.iov_base = local_addr + done
        local.iov_len = size - done
        remote.iov_base = remote_addr + done
        remote.iov_len = size - done
        # ctypes releases the GIL for the call: other threads run while the kernel copies.
        n = fn(pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
        if n < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        if n == 0:
            raise OSError(errno.EFAULT, "process_vm transfer made no progress")
        done += n


def process_vm_readv(pid: int, local_addr: int, remote_addr: int, size: int) -> None:
    """Copy ``size`` bytes from ``remote_addr`` in process ``pid`` to ``local_addr`` here.

    Raises:
        OSError: the kernel refused (ESRCH: no such process, EFAULT: bad address, EPERM).
    """
    _vm_io(False, pid, local_addr, remote_addr, size)


def process_vm_writev(pid: int, local_addr: int, remote_addr: int, size: int) -> None:
    """Copy ``size`` bytes from ``local_addr`` here to ``remote_addr`` in process ``pid``.

    Raises:
        OSError: the kernel refused (ESRCH: no such process, EFAULT: bad address, EPERM).
    """
    _vm_io(True, pid, local_addr, remote_addr, size)


def allow_cma_from_any_process() -> None:
    """Let any process of this user attach (Yama ``ptrace_scope`` 1 would limit to ancestors)."""
    try:
        pr_set_ptracer, pr_set_ptracer_any = 0x59616D61, ctypes.c_ulong(-1).value
        _libc.prctl(pr_set_ptracer, ctypes.c_ulong(pr_set_ptracer_any), 0, 0, 0)
    except Exception:  # pragma: no cover - prctl is best effort; the error surfaces on use
        pass


class _Owner:
    __slots__ = ("pidfd", "poller")

    def __init__(self, pidfd: int) -> None:
        self.pidfd = pidfd
        self.poller = select.poll()
        self.poller.register(pidfd, select.POLLIN)


class CmaBackend:
    """Transfers between processes of this host with ``process_vm_readv``/``writev``."""

    name = "cma"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._owners: dict[tuple[int, int], _Owner] = {}
        self._record = ctypes.create_string_buffer(RECORD.size)
        self._record_lock = threading.Lock()

    @staticmethod
    def can_reach(desc: Descriptor) -> bool:
        """Whether ``desc``'s owner shares this kernel and pid namespace."""
        return desc.host == host_identity() and desc.device == "cpu"

    def _owner(self, desc: Descriptor) -> _Owner:
        key = (desc.pid, desc.start_time)
        owner = self._owners.get(key)
        if owner is None:
            try:
                pidfd = os.pidfd_open(desc.pid)
            except ProcessLookupError:
                raise RDMAError(
                    f"RDMA buffer owner {desc.owner} (pid {desc.pid}) has exited"
                ) from None
            try:
                same = proc_start_time(desc.pid) == desc.start_time
            except ProcessLookupError:
                same = False
            if not same:
                os.close(pidfd)
                raise RDMAError(
                    f"RDMA buffer owner {desc.owner} (pid {desc.pid}) has exited "
                    "(the pid now names another process)"
                )
            owner = _Owner(pidfd)
            with self._lock:
                self._owners.setdefault(key, owner)
                owner = self._owners[key]
        if owner.poller.poll(0):
            raise RDMAError(f"RDMA buffer owner {desc.owner} (pid {desc.pid}) has exited")
        return owner

    def _check_record(self, desc: Descriptor, write: bool) -> None:
        with self._record_lock:
            try:
                process_vm_readv(
                    desc.pid, ctypes.addressof(self._record), desc.record_addr, RECORD.size
                )
            except OSError as exc:
                raise self._translate(desc, exc) from exc
            magic, key, addr, size, flags, region_id = RECORD.unpack_from(self._record, 0)
        if (
            magic != RECORD_MAGIC
            or region_id != desc.region_id
            or addr != desc.addr
            or size != desc.size
        ):
            raise RDMAError(f"RDMA buffer {desc.region_id} of {desc.owner}: no such registration")
        if not flags & FLAG_VALID:
            raise RDMAError(f"RDMA buffer {desc.region_id} of {desc.owner} was dropped")
        if key != desc.key:
            raise RDMAError(f"RDMA buffer {desc.region_id} of {desc.owner}: wrong key")
        if write and not flags & FLAG_WRITABLE:
            raise RDMAError(f"RDMA buffer {desc.region_id} of {desc.owner} is read-only")

    def _translate(self, desc: Descriptor, exc: OSError) -> RDMAError:
        if exc.errno == errno.ESRCH:
            return RDMAError(f"RDMA buffer owner {desc.owner} (pid {desc.pid}) has exited")
        if exc.errno == errno.EPERM:
            return RDMAError(
                f"not permitted to attach to pid {desc.pid} (ptrace restrictions; different user?)"
            )
        return RDMAError(f"RDMA transfer with {desc.owner} failed: {exc}")

    def transfer(
        self,
        desc: Descriptor,
        offset: int,
        local_addr: int,
        size: int,
        write: bool,
        deadline: float,
    ) -> None:
        """Move ``size`` bytes between ``local_addr`` and the region at ``offset``.

        Args:
            desc: the remote region; bounds already checked by the caller.
            offset: byte offset in the region.
            local_addr: address of the local memory.
            size: bytes to move.
            write: True to write local -> remote, False to read remote -> local.
            deadline: ``time.monotonic()`` value after which the transfer gives up.

        Raises:
            RDMAError: owner gone, wrong key, dropped, read-only, timed out, kernel refused.
        """
        self._owner(desc)
        done = 0
        while True:
            self._check_record(desc, write)
            if done >= size:
                return
            if time.monotonic() > deadline:
                raise RDMAError(f"RDMA transfer with {desc.owner} timed out")
            n = min(CHUNK_BYTES, size - done)
            try:
                _vm_io(write, desc.pid, local_addr + done, desc.addr + offset + done, n)
            except OSError as exc:
                raise self._translate(desc, exc) from exc
            done += n
