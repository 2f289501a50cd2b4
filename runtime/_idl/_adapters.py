"""Adapters: schema structs that a higher layer converts to and from its own Python class.

Some structs of ``/monarch/actor.capnp`` stand for objects of packages above the runtime (the
``RDMABuffer`` struct is a :class:`monarch.rdma.RDMABuffer`). The runtime must not import those
packages, so each registers an adapter for its struct's node id when it is imported; generated
code that uses such a struct imports the package, so the adapter is there wherever the generated
module is. Field type expression: ``Adapted(0x<node id>)`` (see :mod:`monarch._idl._types`).
"""

from __future__ import annotations

import threading
from typing import Any, Protocol

__all__ = ["StructAdapter", "get_adapter", "register_adapter"]


class StructAdapter(Protocol):
    """Converts between one schema struct and a Python class.

    Both methods run wherever a message is encoded or decoded: any thread, event loop included;
    they must not block.
    """

    def write(self, builder: Any, value: Any) -> None:
        """Fill the pycapnp struct ``builder`` from ``value``.

        Raises:
            TypeError: ``value`` is not of the adapter's class.
        """
        ...

    def read(self, reader: Any) -> Any:
        """The Python value of the pycapnp struct ``reader`` (copy what it keeps: the reader
        is valid only as long as its message)."""
        ...


_lock = threading.Lock()
_adapters: dict[int, StructAdapter] = {}
_owners: dict[int, str] = {}


def register_adapter(node_id: int, adapter: StructAdapter, owner: str) -> None:
    """Make ``adapter`` convert fields of the struct ``node_id`` (once per process).

    Args:
        node_id: the struct's Cap'n Proto node id.
        adapter: the converter.
        owner: the package that registers it (named in errors), e.g. ``"monarch.rdma"``.

    Raises:
        ValueError: another adapter is already registered for ``node_id``.
    """
    with _lock:
        old = _adapters.get(node_id)
        if old is not None and old is not adapter:
            raise ValueError(f"struct {node_id:#x} already has an adapter from {_owners[node_id]}")
        _adapters[node_id] = adapter
        _owners[node_id] = owner


def get_adapter(node_id: int) -> StructAdapter:
    """The adapter of struct ``node_id``.

    Raises:
        LookupError: no adapter is registered (the package that provides it was not imported).
    """
    adapter = _adapters.get(node_id)
    if adapter is None:
        raise LookupError(
            f"no adapter for struct {node_id:#x}: import the package that provides it "
            "(monarch.rdma for M.RDMABuffer) before sending or receiving it"
        )
    return adapter
