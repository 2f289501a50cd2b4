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

__all__ = ["RECORD", "RECORD_MAGIC", "Region", "Registry", "get_registry"]

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
    """

    __slots__ = ("extra", "key", "memory", "record", "region_id", "valid")

    def __init__(self, region_id: int, key: int, memory: LocalMemory) -> None:
        self.region_id = region_id
        self.key = key
        self.memory = memory
        self.valid = True
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
            f"<Region {self.region_id} {self.memory.size} bytes at {self.memory.addr:#x} {state}>"
        )


class Registry:
    """The memory regions this process has registered, by id.

    Thread-safe: the actor loop registers, the RDMA server thread looks up, any thread drops.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._regions: dict[int, Region] = {}
        self._next_id = 1
        self._graveyard: list[tuple[float, Region, Callable[[Region], None]]] = []

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
        self._bury()
        return region

    def lookup(self, region_id: int, key: int) -> Region:
        """The live region ``region_id`` if ``key`` is its key.

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

    def drop(
        self, region_id: int, key: int, grace_s: float, on_release: Callable[[Region], None]
    ) -> Region | None:
        """Drop a region: refuse new transfers now, free its memory after ``grace_s`` seconds.

        The grace period covers transfers that passed their checks just before the drop and
        still move bytes (the owner cannot see one-sided transfers).

        Returns:
            The region if it was live; None if it was already dropped (dropping twice is fine).

        Raises:
            RDMAError: ``key`` is not the region's key.
        """
        with self._lock:
            region = self._regions.get(region_id)
            if region is None or not region.valid:
                return None
            if region.key != key:
                raise RDMAError(f"RDMA region {region_id}: wrong key")
            region.invalidate()
            del self._regions[region_id]
            self._graveyard.append((time.monotonic() + grace_s, region, on_release))
        release = threading.Timer(grace_s + 0.01, self._bury)
        release.daemon = True
        release.start()
        return region

    def _bury(self) -> None:
        now = time.monotonic()
        with self._lock:
            due = [(r, cb) for t, r, cb in self._graveyard if t <= now]
            self._graveyard = [e for e in self._graveyard if e[0] > now]
        for region, on_release in due:
            on_release(region)
            region.memory = LocalMemory(0, 0, False, "cpu", None)

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
