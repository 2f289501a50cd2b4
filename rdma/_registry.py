"""The per-process registry of memory regions that remote processes may read and write.

Each registration gets a random 64-bit key and a 48-byte *registration record* in this process's
memory (magic, key, address, size, flags, id). The record is what makes CMA safe without the
owner's CPU: a reader first reads the record with ``process_vm_readv`` and compares it with its
handle, so a wrong key, a dropped region or a recycled pid is refused before any data moves.
"""

from __future__ import annotations

import ctypes
import os
import secrets
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

from monarch._core.errors import RDMAError

from ._memory import LocalMemory

__all__ = ["RECORD", "RECORD_MAGIC", "Lease", "Region", "Registry", "get_registry"]

RECORD = struct.Struct("<QQQQQQ")  # magic key addr size flags region_id
RECORD_MAGIC = 0x314D52444D41524D  # b"MRADRMR1"
FLAG_VALID = 1
FLAG_WRITABLE = 2


class Region:
    """One registered memory region of this process.

    Attributes:
        region_id: index in this process's registry.
        key: random 64-bit key.
        memory: the registered memory (its ``keepalive`` pins the tensor or memoryview).
        record: the registration record, in this process's memory.
        extra: backend state tied to the region (a verbs memory region), closed on release.
        valid: False once dropped.
        leases: operations of this process (TCP server requests, local copies) that hold the
            region now; its memory is released only when this is 0.
    """

    __slots__ = ("_revokers", "extra", "key", "leases", "memory", "record", "region_id", "valid")

    def __init__(self, region_id: int, key: int, memory: LocalMemory) -> None:
        self.region_id = region_id
        self.key = key
        self.memory = memory
        self.valid = True
        self.leases = 0
        self._revokers: dict[int, Callable[[], None]] = {}
        self.extra: list[Any] = []
        self.record = ctypes.create_string_buffer(RECORD.size)
        self._write_record()

    @property
    def record_addr(self) -> int:
        """Address of the registration record."""
        return ctypes.addressof(self.record)

    def _write_record(self) -> None:
        flags = (FLAG_VALID if self.valid else 0) | (FLAG_WRITABLE if self.memory.writable else 0)
        RECORD.pack_into(
            self.record,
            0,
            RECORD_MAGIC,
            self.key if self.valid else 0,
            self.memory.addr,
            self.memory.size,
            flags,
            self.region_id,
        )

    def invalidate(self) -> None:
        """Mark dropped: the record stops matching any handle at once."""
        self.valid = False
        self._write_record()

    def __repr__(self) -> str:
        state = "valid" if self.valid else "dropped"
        return (
            f"<Region {self.region_id} {self.memory.size} bytes at {self.memory.addr:#x} {state}"
            f" leases={self.leases}>"
        )


class Lease:
    """One operation's hold on a live region: while held, the region's memory is not released.

    Use as a context manager (or call :meth:`release` exactly once). ``addr`` is valid for
    ``length`` bytes until then.

    Attributes:
        region: the region held.
        addr: address of the first byte of the leased range.
        length: bytes in the leased range.
    """

    __slots__ = ("_registry", "_token", "addr", "length", "region")

    def __init__(
        self, registry: Registry, region: Region, token: int, addr: int, length: int
    ) -> None:
        self._registry = registry
        self._token = token
        self.region = region
        self.addr = addr
        self.length = length

    def release(self) -> None:
        """End the hold (a second call does nothing)."""
        if self._token:
            token, self._token = self._token, 0
            self._registry._release(self.region, token)

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __repr__(self) -> str:
        return (
            f"<Lease region={self.region.region_id} {self.length} bytes held={bool(self._token)}>"
        )


class Registry:
    """The memory regions this process has registered, by id.

    Thread-safe: the actor loop registers, the RDMA server threads lease, any thread drops.

    Lifetime of a region's memory (the object its ``keepalive`` holds): from :meth:`register`
    until the region is dropped AND its grace period has passed AND no :class:`Lease` holds
    it. The grace period covers one-sided (``cma``) transfers that this process cannot see;
    leases cover everything this process does itself (TCP server requests, local copies).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)  # notified when a dropped region's lease ends
        self._regions: dict[int, Region] = {}
        self._next_id = 1
        self._next_token = 1
        self._graveyard: list[tuple[float, Region, Callable[[Region], None]]] = []
        self._reaper: threading.Thread | None = None

    def register(self, memory: LocalMemory) -> Region:
        """Register ``memory``; it stays alive until :meth:`drop`.

        Raises:
            ValueError: ``memory`` is empty.
        """
        if memory.size == 0:
            raise ValueError("cannot register an empty memory region (size 0)")
        with self._lock:
            region = Region(self._next_id, secrets.randbits(64) | 1, memory)
            self._next_id += 1
            self._regions[region.region_id] = region
        return region

    def lookup(self, region_id: int, key: int) -> Region:
        """The live region ``region_id`` if ``key`` is its key.

        The region may be dropped right after this returns: to touch its memory, take a
        :meth:`lease` instead.

        Raises:
            RDMAError: no such region, wrong key, or dropped.
        """
        region = self._regions.get(region_id)
        if region is None or not region.valid:
            raise RDMAError(
                f"RDMA region {region_id} of pid {os.getpid()} was dropped or never existed"
            )
        if not secrets.compare_digest(region.key.to_bytes(8, "little"), key.to_bytes(8, "little")):
            raise RDMAError(f"RDMA region {region_id}: wrong key")
        return region

    def lease(
        self,
        region_id: int,
        key: int,
        offset: int,
        length: int,
        write: bool,
        revoke: Callable[[], None] | None = None,
    ) -> Lease:
        """Hold bytes ``[offset, offset + length)`` of a live region for one operation.

        Args:
            region_id: the region's id.
            key: its key.
            offset: first byte, from the start of the region.
            length: bytes.
            write: whether the operation writes the memory.
            revoke: called (under the registry's lock, so it must not block or call back into
                the registry) if the region is dropped while the lease is held; it should make
                the operation stop touching the memory soon (the TCP server shuts the socket).

        Raises:
            RDMAError: no such region, wrong key, dropped, out of bounds, or read-only.
        """
        with self._lock:
            region = self.lookup(region_id, key)
            if offset < 0 or length < 0 or offset + length > region.memory.size:
                raise RDMAError(
                    f"RDMA access [{offset}, {offset + length}) out of bounds of "
                    f"{region.memory.size} bytes"
                )
            if write and not region.memory.writable:
                raise RDMAError(f"RDMA region {region_id} is read-only")
            token = self._next_token
            self._next_token += 1
            region.leases += 1
            if revoke is not None:
                region._revokers[token] = revoke
            return Lease(self, region, token, region.memory.addr + offset, length)

    def _release(self, region: Region, token: int) -> None:
        with self._lock:
            region.leases -= 1
            region._revokers.pop(token, None)
            if region.leases == 0 and not region.valid:
                self._idle.notify_all()
                self._start_reaper()

    def drop(
        self,
        region_id: int,
        key: int,
        grace_s: float,
        on_release: Callable[[Region], None],
        wait_s: float = 1.0,
    ) -> Region | None:
        """Drop a region: refuse new operations now, release its memory when safe.

        Operations of this process that hold the region are revoked at once and waited for
        (up to ``wait_s`` seconds; a straggler past that keeps the memory alive until it ends).
        The memory is released, and ``on_release(region)`` called, when ``grace_s`` seconds
        have passed and no lease holds the region. The grace period covers one-sided
        transfers that passed their checks just before the drop (the owner cannot see them).

        Args:
            region_id: the region's id.
            key: its key.
            grace_s: seconds to keep the memory alive for one-sided transfers.
            on_release: called on a registry thread when the memory is released.
            wait_s: seconds to wait for this process's own operations on the region to end.

        Returns:
            The region if it was live; None if it was already dropped (dropping twice is fine).

        Raises:
            RDMAError: ``key`` is not the region's key.
        """
        with self._lock:
            region = self._regions.get(region_id)
            if region is None or not region.valid:
                return None
            if not secrets.compare_digest(
                region.key.to_bytes(8, "little"), key.to_bytes(8, "little")
            ):
                raise RDMAError(f"RDMA region {region_id}: wrong key")
            region.invalidate()
            del self._regions[region_id]
            self._graveyard.append((time.monotonic() + grace_s, region, on_release))
            for revoke in region._revokers.values():
                try:
                    revoke()
                except Exception:  # a revoke is best effort: the lease still bounds the free
                    pass
            region._revokers.clear()
            self._idle.wait_for(lambda: region.leases == 0, timeout=max(wait_s, 0.0))
            self._start_reaper()
        return region

    def _start_reaper(self) -> None:
        # Called with the lock held. One thread at most sleeps until the next release is due.
        if self._reaper is None and self._graveyard:
            self._reaper = threading.Thread(
                target=self._reap, name="monarch-rdma-reaper", daemon=True
            )
            self._reaper.start()

    def _reap(self) -> None:
        while True:
            self._bury()
            with self._lock:
                pending = [t for t, r, _ in self._graveyard if r.leases == 0]
                if not pending:
                    # Nothing is due by time alone: the last lease's release buries the rest.
                    self._reaper = None
                    return
                self._idle.wait(timeout=max(min(pending) - time.monotonic(), 0.0) + 0.001)

    def _bury(self) -> None:
        now = time.monotonic()
        with self._lock:
            due = [(r, cb) for t, r, cb in self._graveyard if t <= now and r.leases == 0]
            if not due:
                return
            done = {id(r) for r, _ in due}
            self._graveyard = [e for e in self._graveyard if id(e[1]) not in done]
        for region, on_release in due:
            try:
                on_release(region)
            finally:
                region.memory = LocalMemory(0, 0, False, "cpu", None)

    @property
    def dropped(self) -> int:
        """Dropped regions whose memory is not released yet."""
        return len(self._graveyard)

    def __len__(self) -> int:
        return len(self._regions)

    def __repr__(self) -> str:
        return (
            f"<Registry pid={os.getpid()} live={len(self._regions)} dropped={len(self._graveyard)}>"
        )


_registry = Registry()


def get_registry() -> Registry:
    """This process's registry (a fresh, empty one in a forked child)."""
    return _registry


def _reset_after_fork() -> None:
    global _registry
    _registry = Registry()


os.register_at_fork(after_in_child=_reset_after_fork)
