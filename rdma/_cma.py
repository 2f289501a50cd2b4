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

Access: ``process_vm_readv``/``writev`` need ptrace access to the owner (same user, owner
dumpable, or ``CAP_SYS_PTRACE``). Where the kernel's Yama LSM is set to ``ptrace_scope`` 1
(Ubuntu's default), only the owner's ancestors may attach, so an owner declares one ptracer
with ``PR_SET_PTRACER``: by default the root of its job (the topmost ancestor running the same
Python executable, i.e. the client that started the procs), which lets exactly that process
and its descendants attach; never ``PR_SET_PTRACER_ANY``. Without Yama or at scope 0 nothing is
declared (the classic same-user rule applies); at scope 2 or 3 only privileged readers can
attach. Wherever the kernel refuses (``EPERM``), ``auto`` mode falls back to the ``tcp``
backend for that owner; a forced ``cma`` backend raises :class:`RDMAError`.
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

__all__ = [
    "CHUNK_BYTES",
    "CmaAccessDenied",
    "CmaBackend",
    "allow_cma_from_job",
    "job_root",
    "process_vm_readv",
    "process_vm_writev",
    "ptrace_scope",
]

CHUNK_BYTES = 32 << 20  # record re-check interval; 32 MiB is ~4 ms of copying
MAX_OWNERS = 1024  # owners whose pidfd stays open (a least-recently-opened one is closed first)
_PR_SET_PTRACER = 0x59616D61  # b"Yama"
_YAMA_SCOPE = "/proc/sys/kernel/yama/ptrace_scope"


class CmaAccessDenied(RDMAError):
    """The kernel refused to attach to the owner (ptrace rules); ``tcp`` can still reach it."""


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


def ptrace_scope(path: str = _YAMA_SCOPE) -> int | None:
    """The kernel's Yama ``ptrace_scope`` (0-3), or None where Yama is not enabled."""
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def _parent_and_exe(pid: int) -> tuple[int, str]:
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    ppid = int(stat[stat.rindex(b")") + 2 :].split()[1])
    return ppid, os.readlink(f"/proc/{pid}/exe")


def job_root(pid: int | None = None) -> int:
    """The root of ``pid``'s job: its topmost ancestor (or itself) running the same executable.

    For a proc that is the client that started the procs (through any number of Python
    ancestors, e.g. the fork server); for the client itself, the client.

    Args:
        pid: the process; None means this one.
    """
    pid = os.getpid() if pid is None else pid
    try:
        parent, exe = _parent_and_exe(pid)
    except OSError:
        return pid
    root = pid
    while parent > 1:
        try:
            grandparent, parent_exe = _parent_and_exe(parent)
        except OSError:
            break
        if parent_exe != exe:
            break
        root, parent = parent, grandparent
    return root


_declared: int | None = None
_declared_lock = threading.Lock()


def _prctl_set_ptracer(pid: int) -> int:
    rc = int(_libc.prctl(_PR_SET_PTRACER, ctypes.c_ulong(pid), 0, 0, 0))
    return 0 if rc == 0 else ctypes.get_errno()


def allow_cma_from_job(ptracer: int = 0, scope: int | None = -2) -> int | None:
    """Let this process's job attach with ``process_vm_readv`` where Yama requires a declaration.

    Declares (once per process) ``PR_SET_PTRACER`` with one pid, whose descendants may then
    attach too; never ``PR_SET_PTRACER_ANY``. Does nothing without Yama or at ``ptrace_scope``
    0 (not needed) and at 2 or 3 (a declaration has no effect there).

    Args:
        ptracer: 0 for :func:`job_root`, a pid, or -1 to declare nothing.
        scope: the Yama scope; -2 reads it from ``/proc/sys/kernel/yama/ptrace_scope``.

    Returns:
        The pid declared, or None when nothing was declared (or the kernel refused).
    """
    global _declared
    if scope == -2:
        scope = ptrace_scope()
    if scope != 1 or ptracer == -1:
        return None
    pid = job_root() if ptracer == 0 else ptracer
    with _declared_lock:
        if _declared == pid:
            return pid
        err = _prctl_set_ptracer(pid)
        if err:  # e.g. the pid exited: peers that are not ancestors will fall back to tcp
            return None
        _declared = pid
        return pid


def _reset_after_fork() -> None:
    global _declared
    _declared = None  # Yama relations are per task: a forked child has none


os.register_at_fork(after_in_child=_reset_after_fork)


class _Owner:
    __slots__ = ("pidfd", "poller")

    def __init__(self, pidfd: int) -> None:
        self.pidfd = pidfd
        self.poller = select.poll()
        self.poller.register(pidfd, select.POLLIN)

    def __del__(self) -> None:
        # Closed only when no thread holds this object any more: no poll on a reused fd.
        try:
            os.close(self.pidfd)
        except OSError:
            pass


class CmaBackend:
    """Transfers between processes of this host with ``process_vm_readv``/``writev``."""

    name = "cma"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._owners: dict[tuple[int, int], _Owner] = {}
        self._denied: dict[tuple[int, int], None] = {}
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
                while len(self._owners) >= MAX_OWNERS:
                    del self._owners[next(iter(self._owners))]
                owner = self._owners.setdefault(key, owner)
        if owner.poller.poll(0):
            with self._lock:
                if self._owners.get(key) is owner:
                    del self._owners[key]
                self._denied.pop(key, None)
            raise RDMAError(f"RDMA buffer owner {desc.owner} (pid {desc.pid}) has exited")
        return owner

    def denied(self, desc: Descriptor) -> bool:
        """Whether the kernel has refused to attach to ``desc``'s owner."""
        return (desc.pid, desc.start_time) in self._denied

    def _deny(self, desc: Descriptor) -> None:
        with self._lock:
            while len(self._denied) >= MAX_OWNERS:
                del self._denied[next(iter(self._denied))]
            self._denied[(desc.pid, desc.start_time)] = None

    def __len__(self) -> int:
        return len(self._owners)

    def __repr__(self) -> str:
        return f"<CmaBackend owners={len(self._owners)} denied={len(self._denied)}>"

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
            self._deny(desc)
            return CmaAccessDenied(
                f"not permitted to attach to pid {desc.pid} with process_vm_readv (ptrace "
                f"rules: another user, Yama ptrace_scope {ptrace_scope()}, or the owner declared "
                "another ptracer); use the tcp backend"
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
            CmaAccessDenied: the kernel refused to attach (``tcp`` can still reach the owner).
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
