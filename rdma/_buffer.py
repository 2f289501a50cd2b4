"""The public RDMA API: :class:`RDMABuffer` handles and batched :class:`RDMAAction` transfers.

API and semantics follow Meta Monarch's ``monarch.rdma`` so that its examples run unchanged:
``RDMABuffer(data)`` in the owning actor, the handle returned from or passed to any endpoint,
``read_into``/``write_from``/``drop`` returning futures.
"""

from __future__ import annotations

import importlib
import operator
import os
import socket
from typing import TYPE_CHECKING, Any

from monarch._core.future import Future

from . import _engine, _ibverbs
from ._config import current
from ._descriptor import Descriptor
from ._memory import local_memory

if TYPE_CHECKING:
    import torch

    LocalMemoryLike = torch.Tensor | memoryview
else:
    LocalMemoryLike = Any

__all__ = [
    "RDMAAction",
    "RDMABuffer",
    "get_rdma_backend",
    "is_ibverbs_available",
    "is_rdma_available",
]


class _Size(int):
    """A byte count that can also be called: Monarch spells it ``buf.size()``, we ``buf.size``."""

    def __call__(self) -> int:
        return int(self)


def _owner_name() -> str:
    """A readable name of the current actor, or of this proc outside actors."""
    try:
        # Looked up at run time: the runtime is a lower layer and may not be loaded at all.
        actor_api = importlib.import_module("monarch.actor")
        name = str(actor_api.context().actor_instance.actor_id)
        if name and name != "client":
            return name
    except Exception:
        pass
    return f"proc {socket.gethostname()}:{os.getpid()}"


def _validate_timeout(timeout: float) -> float:
    value = float(operator.index(timeout)) if isinstance(timeout, int) else float(timeout)
    if not value >= 0:
        raise ValueError(f"timeout must be >= 0 seconds, got {timeout!r}")
    return value


class RDMABuffer:
    """A handle to registered memory that any process can read and write one-sidedly.

    Create it in the owning actor; the memory stays registered (and alive) until :meth:`drop`.
    The handle is small (about 150 bytes pickled; about 500 with the reference to the owner
    proc's RDMA manager actor) and can be returned from or passed to any endpoint; transfers
    with it never go through the owner's actor loop.

    Args:
        data: the memory: a 1-D contiguous ``torch.Tensor`` (CPU; CUDA with an ibverbs device)
            or a 1-D C-contiguous ``memoryview``. A read-only memoryview makes a read-only buffer.

    Raises:
        ValueError: ``data`` is not 1-D contiguous, or is empty.
        TypeError: ``data`` is neither a tensor nor a memoryview.
        RDMAUnavailableError: CUDA memory without an ibverbs device.
    """

    __slots__ = ("_desc", "_region")

    def __init__(self, data: LocalMemoryLike) -> None:
        memory = local_memory(data)
        if memory.size == 0:
            raise ValueError("Cannot create RDMABuffer with size 0.")
        region, desc = _engine.register(memory, _owner_name())
        self._region: Any = region
        self._desc = desc

    @classmethod
    def _from_descriptor(cls, desc: Descriptor) -> RDMABuffer:
        buf = cls.__new__(cls)
        buf._region = None
        buf._desc = desc
        return buf

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (self._desc.encode(),))

    def to_bytes(self) -> bytes:
        """The handle as bytes (the ``descriptor`` field of the IDL's ``RDMABuffer`` struct)."""
        return self._desc.encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> RDMABuffer:
        """Rebuild a handle from :meth:`to_bytes`.

        Raises:
            ValueError: ``data`` is not an encoded handle.
        """
        return cls._from_descriptor(Descriptor.decode(data))

    @property
    def size(self) -> _Size:
        """Length of the registered memory in bytes (also callable: ``buf.size()``, as Monarch)."""
        return _Size(self._desc.size)

    @property
    def owner(self) -> str:
        """A readable name of the actor (or proc) that registered the memory."""
        return self._desc.owner

    @property
    def backend(self) -> str:
        """The backend a transfer from this process would use (``local``, ``cma``, ``ibverbs``, ``tcp``).

        Raises:
            RDMAUnavailableError: a forced backend cannot reach the owner.
        """
        return _engine.choose_backend(self._desc).name

    def read_into(self, dst: LocalMemoryLike, *, timeout: float = 60) -> Future[None]:
        """Read the whole buffer into ``dst`` (remote -> local).

        Args:
            dst: 1-D contiguous tensor or memoryview of at least :attr:`size` bytes; only the
                first :attr:`size` bytes are written.
            timeout: seconds for the transfer.

        Returns:
            A future that resolves to None when the bytes are in ``dst``.

        Raises:
            ValueError: ``dst`` is smaller than the buffer or read-only (raised here).
            RDMAError: (from the future) bad key, dropped, owner gone, timed out.
        """
        return RDMAAction().read_remote(dst, self).submit(timeout=timeout)

    def write_from(self, src: LocalMemoryLike, *, timeout: float = 60) -> Future[None]:
        """Write ``src`` into the start of the buffer (local -> remote).

        Args:
            src: 1-D contiguous tensor or memoryview of at most :attr:`size` bytes.
            timeout: seconds for the transfer.

        Returns:
            A future that resolves to None when the bytes are in the owner's memory.

        Raises:
            ValueError: ``src`` is larger than the buffer, or the buffer is read-only.
            RDMAError: (from the future) bad key, dropped, owner gone, timed out.
        """
        return RDMAAction().write_remote(self, src).submit(timeout=timeout)

    def drop(self, *, timeout: float = 60) -> Future[None]:
        """Release the registration: later transfers with any copy of this handle fail.

        Works from the owner or from any process holding the handle. The owner keeps the
        memory alive for a short grace period (``MONARCH_RDMA_DROP_GRACE_S``) for transfers
        already past their checks. Dropping twice is fine.

        Returns:
            A future that resolves to None once the owner has dropped the registration.
        """
        fut: Future[None] = Future()
        desc = self._desc
        timeout_s = _validate_timeout(timeout)

        def run() -> None:
            _engine.drop(desc, timeout_s)

        _engine.call_soon(fut, run)
        return fut

    def __repr__(self) -> str:
        return f"<RDMABuffer {self._desc.size} bytes owner={self._desc.owner!r} region={self._desc.region_id}>"


def _rebuild(data: bytes) -> RDMABuffer:
    return RDMABuffer.from_bytes(data)


_rebuild.__module__ = "monarch.rdma"


class RDMAAction:
    """A batch of reads and writes, validated up front and submitted together.

    Operations run in the order queued; the future resolves when all are done or the first fails.
    """

    __slots__ = ("_ops",)

    def __init__(self) -> None:
        self._ops: list[_engine.Op] = []

    def read_remote(self, dst: LocalMemoryLike, src: RDMABuffer) -> RDMAAction:
        """Queue a read of all of ``src`` into local ``dst``.

        Raises:
            ValueError: ``dst`` is smaller than ``src`` or read-only.
        """
        op = _engine.Op(src._desc, local_memory(dst), write=False)
        _engine.check_ops([op])
        self._ops.append(op)
        return self

    def write_remote(self, dst: RDMABuffer, src: LocalMemoryLike) -> RDMAAction:
        """Queue a write of local ``src`` into the start of ``dst``.

        Raises:
            ValueError: ``src`` is larger than ``dst`` or ``dst`` is read-only.
        """
        op = _engine.Op(dst._desc, local_memory(src), write=True)
        _engine.check_ops([op])
        self._ops.append(op)
        return self

    def fetch_add(self, src: RDMABuffer, dst: LocalMemoryLike, add: int) -> RDMAAction:
        """Not supported (as in Monarch)."""
        raise NotImplementedError("Not yet supported")

    def compare_and_swap(
        self, src: RDMABuffer, dst: LocalMemoryLike, compare: int, swap: int
    ) -> RDMAAction:
        """Not supported (as in Monarch)."""
        raise NotImplementedError("Not yet supported")

    def submit(self, *, timeout: float = 60) -> Future[None]:
        """Run the queued operations; may be called several times (each runs them again).

        Args:
            timeout: seconds for the whole batch.

        Returns:
            A future resolved with None when every operation completed, or with the first
            :class:`~monarch._core.errors.RDMAError`.
        """
        return _engine.submit(list(self._ops), _validate_timeout(timeout))

    def __repr__(self) -> str:
        reads = sum(1 for op in self._ops if not op.write)
        return f"<RDMAAction reads={reads} writes={len(self._ops) - reads}>"


def is_ibverbs_available() -> bool:
    """Whether this process has an ibverbs RDMA device (and pyverbs)."""
    return _ibverbs.is_available()


def is_rdma_available() -> bool:
    """Deprecated in Monarch; same as :func:`is_ibverbs_available`."""
    return is_ibverbs_available()


def get_rdma_backend() -> str:
    """The backend this process uses to reach memory on other hosts.

    Returns:
        The forced backend if one is configured, else ``ibverbs`` when a device exists, else
        ``tcp``. Transfers with owners on this host use ``cma`` regardless in ``auto`` mode.
    """
    forced = current().backend
    if forced != "auto":
        return forced
    return "ibverbs" if is_ibverbs_available() else "tcp"
