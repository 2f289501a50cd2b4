"""Registration, backend choice and execution of RDMA operations, independent of actors.

This is the data plane under :class:`monarch.rdma.RDMABuffer`: it registers memory in the owner
process (registry, RDMA server, verbs memory region), picks a backend per transfer and runs
transfers on the RDMA worker threads, completing :class:`monarch._core.future.Future` objects.
"""

from __future__ import annotations

import ctypes
import os
import threading
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

from monarch._core.errors import RDMAUnavailableError
from monarch._core.future import Future

from . import _ibverbs
from ._cma import CmaAccessDenied, CmaBackend, allow_cma_from_job
from ._config import RDMAConfig, current
from ._descriptor import Descriptor, host_identity, proc_start_time
from ._memory import LocalMemory
from ._registry import Region, get_registry
from ._tcp import OP_DROP, TcpBackend, control_request, get_server

__all__ = [
    "INLINE_MAX_BYTES",
    "Op",
    "RDMABackend",
    "RDMATcpFallbackWarning",
    "call_soon",
    "check_ops",
    "choose_backend",
    "drop",
    "drop_local",
    "register",
    "run_ops",
    "submit",
]

INLINE_MAX_BYTES = 256 << 10  # same-host transfers this small run in the caller's thread
_DEFAULT_TCP_HOST = RDMAConfig.tcp_host


class RDMATcpFallbackWarning(UserWarning):
    """No ibverbs device and the owner is on another host: transfers go over TCP (slower)."""


class RDMAReadTransferWarning(UserWarning):
    """Kept for Monarch compatibility; not raised."""


class RDMAWriteTransferWarning(UserWarning):
    """Kept for Monarch compatibility; not raised."""


class RDMABackend(Protocol):
    """A way to move bytes between local memory and a remote registered region."""

    name: str

    def transfer(
        self,
        desc: Descriptor,
        offset: int,
        local_addr: int,
        size: int,
        write: bool,
        deadline: float,
    ) -> None:
        """Move ``size`` bytes; see :meth:`monarch.rdma._cma.CmaBackend.transfer`."""
        ...


class _LocalBackend:
    """The owner's own process: a checked ``memmove``."""

    name = "local"

    def transfer(
        self,
        desc: Descriptor,
        offset: int,
        local_addr: int,
        size: int,
        write: bool,
        deadline: float,
    ) -> None:
        # The lease keeps the memory alive during the copy even if another thread drops it.
        with get_registry().lease(desc.region_id, desc.key, offset, size, write) as lease:
            if write:
                ctypes.memmove(lease.addr, local_addr, size)
            else:
                ctypes.memmove(local_addr, lease.addr, size)


_LOCAL = _LocalBackend()
_CMA = CmaBackend()
_TCP = TcpBackend()
_IBVERBS = _ibverbs.IbverbsBackend()
_warned_tcp = False


def _is_this_process(desc: Descriptor) -> bool:
    return desc.pid == os.getpid() and desc.host == host_identity() and desc.start_time == _START


def choose_backend(desc: Descriptor) -> RDMABackend:
    """The backend for a transfer with ``desc``'s owner, from the configuration and the peers.

    ``auto``: the owner's own process -> a checked memmove; CPU memory on this host -> ``cma``
    (unless the kernel refused to attach to that owner: then ``tcp``); both ends with verbs ->
    ``ibverbs``; otherwise ``tcp`` with an :class:`RDMATcpFallbackWarning` (once per process).

    Raises:
        RDMAUnavailableError: a forced backend cannot reach this owner.
    """
    global _warned_tcp
    forced = current().backend
    if forced == "ibverbs":
        if not _ibverbs.is_available():
            _ibverbs.get_context()  # raises RDMAUnavailableError with the reason
        if desc.verbs is None:
            raise RDMAUnavailableError(f"the owner {desc.owner} has no ibverbs device")
        return _IBVERBS
    if forced == "cma":
        if not _CMA.can_reach(desc):
            raise RDMAUnavailableError(f"cma cannot reach {desc.owner}: another host or GPU memory")
        return _CMA
    if forced == "tcp":
        if not _TCP.can_reach(desc):
            raise RDMAUnavailableError(f"tcp cannot reach {desc.owner}'s memory on {desc.device}")
        return _TCP
    if _is_this_process(desc):
        return _LOCAL
    if _CMA.can_reach(desc):
        if not _CMA.denied(desc) or not _TCP.can_reach(desc):
            return _CMA
        return _TCP
    if desc.verbs is not None and _ibverbs.is_available():
        return _IBVERBS
    if not _TCP.can_reach(desc):
        raise RDMAUnavailableError(f"no RDMA backend reaches {desc.owner}'s {desc.device} memory")
    if not _warned_tcp:
        _warned_tcp = True
        warnings.warn(
            "No ibverbs RDMA device on both ends: RDMA transfers to other hosts fall back to TCP, "
            "which is slower and needs the owner's process. Force a backend with "
            "MONARCH_RDMA_BACKEND or monarch.rdma.configure(backend=...).",
            RDMATcpFallbackWarning,
            stacklevel=4,
        )
    return _TCP


_START = proc_start_time(os.getpid())


def _on_release(region: Region) -> None:
    for extra in region.extra:
        try:
            extra.close()
        except Exception:
            pass
    region.extra.clear()


def register(data: LocalMemory, owner: str) -> tuple[Region, Descriptor]:
    """Register ``data`` in this process and describe it for remote peers.

    Starts this process's RDMA server on first use and registers an ibverbs memory region when
    a verbs device exists.

    Args:
        data: the memory; it stays alive until dropped.
        owner: a readable name of the owner (actor or proc), used in errors and ``owner``.

    Raises:
        ValueError: ``data`` is empty.
        RDMAUnavailableError: GPU memory without an ibverbs device.
    """
    verbs_ok = _ibverbs.is_available()
    if data.device != "cpu" and not verbs_ok:
        raise RDMAUnavailableError("GPU memory can only be registered with an ibverbs device")
    cfg = current()
    allow_cma_from_job(cfg.cma_ptracer)
    server = get_server(_server_host(cfg.tcp_host), _remote_drop)
    region = get_registry().register(data)
    verbs = None
    if verbs_ok:
        ctx = _ibverbs.get_context()
        mr, verbs = ctx.register(data.addr, data.size, data.writable)
        region.extra.append(mr)
        server.on_connect = ctx.accept
    desc = Descriptor(
        region_id=region.region_id,
        key=region.key,
        record_addr=region.record_addr,
        addr=data.addr,
        size=data.size,
        pid=os.getpid(),
        start_time=_START,
        host=host_identity(),
        writable=data.writable,
        device=data.device,
        tcp_host=server.host,
        tcp_port=server.port,
        verbs=verbs,
        owner=owner,
        manager=_manager().manager_ref(verbs is not None),
    )
    return region, desc


def _server_host(configured: str) -> str:
    """Where this process's RDMA server binds and what it advertises.

    The configured address, except that the default (``127.0.0.1``, which no other host can
    reach) becomes the host of this proc's own TCP address in a proc that the actor runtime
    runs over TCP (a proc that a host agent started).
    """
    if configured != _DEFAULT_TCP_HOST:
        return configured
    return _manager().proc_tcp_host() or configured


def _manager() -> Any:
    # Imported on first registration: it imports the actor API, which a process that only
    # reads and writes never needs.
    from . import _manager as manager

    return manager


def drop_local(region_id: int, key: int) -> None:
    """Drop a region of this process (the owner), for a drop requested by another process.

    Raises:
        RDMAError: ``key`` is not the region's key.
    """
    _remote_drop(region_id, key)


def _remote_drop(region_id: int, key: int) -> None:
    region = get_registry().drop(region_id, key, current().drop_grace_s, lambda r: None)
    if region is not None:
        # Deregister verbs memory regions at once: the device checks every packet against
        # them, and after ibv_dereg_mr returns no transfer touches the memory again. The
        # grace period only matters to cma and tcp, which check before they copy.
        _on_release(region)


def drop(desc: Descriptor, timeout_s: float) -> None:
    """Drop the registration: in the owner directly, elsewhere through the owner's RDMA manager
    actor (when the handle names one and this process runs the actor runtime) or its TCP server.

    Dropping twice is fine. A verbs MR is deregistered after the grace period.

    Raises:
        RDMAError: wrong key, or the owner is unreachable.
    """
    if _is_this_process(desc):
        _remote_drop(desc.region_id, desc.key)
        return
    deadline = time.monotonic() + timeout_s
    manager = _manager()
    if desc.manager and manager.manager_of(desc) is not None:
        try:
            manager.control_via_manager(desc, "drop", (desc.region_id, desc.key), deadline)
            return
        except manager.ManagerGone:
            pass  # the owner's TCP server answers instead (or fails if the owner is gone)
    control_request(desc, OP_DROP, b"", deadline)


@dataclass(frozen=True)
class Op:
    """One queued transfer.

    Attributes:
        desc: the remote region.
        local: the local memory (destination of a read, source of a write).
        write: True for local -> remote.
    """

    desc: Descriptor
    local: LocalMemory
    write: bool


def _check(op: Op) -> None:
    if op.write:
        if op.local.size > op.desc.size:
            raise ValueError(
                f"source of {op.local.size} bytes exceeds the RDMA buffer of {op.desc.size} bytes"
            )
        if not op.desc.writable:
            raise ValueError(f"RDMA buffer of {op.desc.owner} is read-only")
    else:
        if op.local.size < op.desc.size:
            raise ValueError(
                f"destination of {op.local.size} bytes is smaller than the RDMA buffer of {op.desc.size} bytes"
            )
        if not op.local.writable:
            raise ValueError("destination memory is read-only")


def check_ops(ops: list[Op]) -> None:
    """Validate sizes and writability before anything moves.

    Raises:
        ValueError: a destination is too small, a source too large, or memory read-only.
    """
    for op in ops:
        _check(op)


def run_ops(ops: list[Op], timeout_s: float) -> None:
    """Run ``ops`` one after another in this thread.

    Raises:
        RDMAError: a transfer failed or the timeout passed.
        RDMAUnavailableError: no backend reaches an owner.
    """
    deadline = time.monotonic() + timeout_s
    for op in ops:
        size = op.desc.size if not op.write else op.local.size
        if size == 0:
            continue
        backend = choose_backend(op.desc)
        try:
            backend.transfer(op.desc, 0, op.local.addr, size, op.write, deadline)
        except CmaAccessDenied:
            # Same host, but the kernel's ptrace rules keep us out: the owner's server can
            # still serve it (later transfers with this owner go to tcp directly).
            if current().backend != "auto" or not _TCP.can_reach(op.desc):
                raise
            _TCP.transfer(op.desc, 0, op.local.addr, size, op.write, deadline)


_pool_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None


def _executor() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="monarch-rdma")
        return _pool


def _reset_after_fork() -> None:
    global _pool, _START
    _pool = None
    _START = proc_start_time(os.getpid())


os.register_at_fork(after_in_child=_reset_after_fork)


def _run_into(fut: Future[None], ops: list[Op], timeout_s: float) -> None:
    try:
        run_ops(ops, timeout_s)
    except BaseException as exc:
        fut.set_exception(exc)
        if not isinstance(exc, Exception):
            raise
    else:
        fut.set_result(None)


def call_soon(fut: Future[None], fn: Callable[[], None]) -> None:
    """Run ``fn`` on an RDMA worker thread and complete ``fut`` with its outcome."""

    def run() -> None:
        try:
            fn()
        except BaseException as exc:
            fut.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
        else:
            fut.set_result(None)

    _executor().submit(run)


def submit(ops: list[Op], timeout_s: float) -> Future[None]:
    """Run ``ops`` on an RDMA worker thread (small same-host ones inline).

    Args:
        ops: validated operations (see :func:`check_ops`).
        timeout_s: seconds for the whole batch.

    Returns:
        A future resolved with None, or with the first :class:`RDMAError`.
    """
    fut: Future[None] = Future()
    total = sum(op.desc.size for op in ops)
    if (
        total <= INLINE_MAX_BYTES
        and current().backend in ("auto", "cma")
        and all(_is_this_process(op.desc) or _CMA.can_reach(op.desc) for op in ops)
    ):
        _run_into(fut, ops, timeout_s)
        return fut
    _executor().submit(_run_into, fut, ops, timeout_s)
    return fut
