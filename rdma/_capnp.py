"""The ``RDMABuffer`` struct of ``/monarch/actor.capnp``: how a handle travels on the IDL path.

Generated code types ``M.RDMABuffer`` fields, parameters and results as
:class:`monarch.rdma.RDMABuffer`; the runtime's capnp codec converts them with the adapter this
module registers (at ``import monarch.rdma``) for the struct's node id. Every field of the
:class:`~monarch.rdma._descriptor.Descriptor` has its own typed field in the struct, so a
captured frame decodes with the ``capnp`` tool.
"""

from __future__ import annotations

from typing import Any

from monarch._idl import register_adapter

from ._buffer import RDMABuffer
from ._descriptor import Descriptor, VerbsRegion

__all__ = ["RDMA_BUFFER_NODE_ID", "RDMABufferAdapter"]

RDMA_BUFFER_NODE_ID = 0xC746B1EBD9B67BA9
"""Node id of ``RDMABuffer`` in ``/monarch/actor.capnp`` (checked against the schema by a test)."""


class RDMABufferAdapter:
    """Writes an :class:`RDMABuffer`'s descriptor into the struct and rebuilds a handle from it."""

    def write(self, builder: Any, value: Any) -> None:
        """Fill an ``RDMABuffer`` struct builder.

        Raises:
            TypeError: ``value`` is not an :class:`RDMABuffer`.
        """
        if not isinstance(value, RDMABuffer):
            raise TypeError(
                f"an M.RDMABuffer field needs an RDMABuffer, got {type(value).__qualname__}"
            )
        d = value._desc
        builder.regionId = d.region_id
        builder.key = d.key
        builder.recordAddr = d.record_addr
        builder.addr = d.addr
        builder.size = d.size
        builder.pid = d.pid
        builder.startTime = d.start_time
        builder.host = d.host
        builder.writable = d.writable
        builder.device = d.device
        builder.tcpHost = d.tcp_host
        builder.tcpPort = d.tcp_port
        if d.verbs is not None:
            verbs = builder.init("verbs")
            verbs.rkey = d.verbs.rkey
            verbs.gid = d.verbs.gid
            verbs.lid = d.verbs.lid
        builder.owner = d.owner
        if d.manager:
            builder.manager = d.manager

    def read(self, reader: Any) -> RDMABuffer:
        """A handle (not registered here) for an ``RDMABuffer`` struct reader."""
        verbs = None
        if reader._has("verbs"):
            v = reader.verbs
            verbs = VerbsRegion(rkey=v.rkey, gid=v.gid, lid=v.lid)
        desc = Descriptor(
            region_id=reader.regionId,
            key=reader.key,
            record_addr=reader.recordAddr,
            addr=reader.addr,
            size=reader.size,
            pid=reader.pid,
            start_time=reader.startTime,
            host=reader.host,
            writable=reader.writable,
            device=reader.device,
            tcp_host=reader.tcpHost,
            tcp_port=reader.tcpPort,
            verbs=verbs,
            owner=reader.owner,
            manager=bytes(reader.manager),
        )
        return RDMABuffer._from_descriptor(desc)


register_adapter(RDMA_BUFFER_NODE_ID, RDMABufferAdapter(), "monarch.rdma")
