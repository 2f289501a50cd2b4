"""The RDMA handle's payload: a small, self-contained description of one registered region.

It is what crosses the wire (pickled on the Python path, the ``RDMABuffer`` struct of
``/monarch/actor.capnp`` on the IDL path) and what every backend needs to reach the region
without asking its owner: where the region lives (host, pid, start time, address), its key, and
how to reach the owner's RDMA server and verbs memory region.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from functools import cache

__all__ = ["Descriptor", "VerbsRegion", "host_identity", "proc_start_time"]

_MAGIC = b"MRB1"
_FIXED = struct.Struct("<4sQQQQQIQB?HI")  # magic region key record addr size pid start flags ...
_STR = struct.Struct("<H")


@dataclass(frozen=True)
class VerbsRegion:
    """How to reach a region with ibverbs.

    Attributes:
        rkey: the memory region's remote key.
        gid: the owner port's GID, as pyverbs prints it.
        lid: the owner port's LID (0 on RoCE).
    """

    rkey: int
    gid: str
    lid: int


@dataclass(frozen=True)
class Descriptor:
    """Everything a reader or writer needs to reach one registered region.

    Attributes:
        region_id: the owner's registry index of the region.
        key: random 64-bit key of this registration (a capability: whoever has it may access).
        record_addr: address, in the owner, of the region's 48-byte registration record.
        addr: address, in the owner, of the region's first byte.
        size: the region's length in bytes.
        pid: the owner's process id.
        start_time: the owner's start time in clock ticks since boot (``/proc/PID/stat`` #22).
        host: identity of the owner's kernel and pid namespace (see :func:`host_identity`).
        writable: whether remote writes are allowed.
        device: ``cpu`` or ``cuda``.
        tcp_host: address of the owner's RDMA TCP server.
        tcp_port: its port.
        verbs: the ibverbs memory region, or None where the owner has no verbs device.
        owner: a readable name of the owner (actor or proc).
        manager: the owner proc's RDMA manager actor, as the bytes of its mesh reference
            (see :mod:`monarch.rdma._manager`); empty when the owner runs outside the actor
            runtime, and then control requests go to the TCP server.
    """

    region_id: int
    key: int
    record_addr: int
    addr: int
    size: int
    pid: int
    start_time: int
    host: str
    writable: bool
    device: str
    tcp_host: str
    tcp_port: int
    verbs: VerbsRegion | None
    owner: str
    manager: bytes = b""

    def encode(self) -> bytes:
        """Pack into a compact byte string (about 120 bytes, plus the manager's reference)."""
        flags = 1 if self.writable else 0
        if self.device == "cuda":
            flags |= 2
        rkey = 0
        if self.verbs is not None:
            flags |= 4
            rkey = self.verbs.rkey
        out = [
            _FIXED.pack(
                _MAGIC,
                self.region_id,
                self.key,
                self.record_addr,
                self.addr,
                self.size,
                self.pid,
                self.start_time,
                flags,
                False,
                self.tcp_port,
                rkey,
            )
        ]
        verbs_gid = self.verbs.gid if self.verbs is not None else ""
        verbs_lid = self.verbs.lid if self.verbs is not None else 0
        for text in (self.host, self.tcp_host, verbs_gid, str(verbs_lid), self.owner):
            raw = text.encode()
            out.append(_STR.pack(len(raw)))
            out.append(raw)
        out.append(_STR.pack(len(self.manager)))
        out.append(self.manager)
        return b"".join(out)

    @classmethod
    def decode(cls, data: bytes) -> Descriptor:
        """Unpack what :meth:`encode` produced.

        Raises:
            ValueError: ``data`` is not an encoded descriptor.
        """
        try:
            (magic, region_id, key, record, addr, size, pid, start, flags, _, port, rkey) = (
                _FIXED.unpack_from(data, 0)
            )
            if magic != _MAGIC:
                raise ValueError("bad magic")
            pos = _FIXED.size
            texts = []
            for _ in range(5):
                (n,) = _STR.unpack_from(data, pos)
                pos += _STR.size
                texts.append(bytes(data[pos : pos + n]).decode())
                pos += n
            (n,) = _STR.unpack_from(data, pos)
            manager = bytes(data[pos + _STR.size : pos + _STR.size + n])
            if len(manager) != n:
                raise ValueError("truncated")
        except (struct.error, UnicodeDecodeError) as exc:
            raise ValueError(f"not an RDMA buffer descriptor: {exc}") from exc
        host, tcp_host, gid, lid, owner = texts
        verbs = VerbsRegion(rkey, gid, int(lid)) if flags & 4 else None
        return cls(
            region_id=region_id,
            key=key,
            record_addr=record,
            addr=addr,
            size=size,
            pid=pid,
            start_time=start,
            host=host,
            writable=bool(flags & 1),
            device="cuda" if flags & 2 else "cpu",
            tcp_host=tcp_host,
            tcp_port=port,
            verbs=verbs,
            owner=owner,
            manager=manager,
        )


def proc_start_time(pid: int) -> int:
    """Start time of process ``pid`` in clock ticks since boot.

    Raises:
        ProcessLookupError: no such process.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except FileNotFoundError:
        raise ProcessLookupError(pid) from None
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    fields = stat[stat.rindex(b")") + 2 :].split()
    return int(fields[19])


@cache
def host_identity() -> str:
    """Identity of this host: kernel, pid namespace and network namespace; CMA stays within one.

    The boot id names the kernel instance; the pid namespace inode makes sure a pid means the
    same process to both sides. The network namespace inode keeps hosts that share a kernel
    (network-namespace hosts, containers with the host's pid namespace) apart: each is reached
    at its own address, so transfers between them go over ``tcp``, as between machines.
    """
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
    except OSError:  # pragma: no cover - every Linux has it
        boot = "unknown"
    inodes = []
    for kind in ("pid", "net"):
        try:
            inodes.append(os.stat(f"/proc/self/ns/{kind}").st_ino)
        except OSError:  # pragma: no cover
            inodes.append(0)
    return f"{boot}/{inodes[0]}/{inodes[1]}"
