"""One-sided reads and writes of registered memory, API-compatible with Monarch's ``monarch.rdma``.

``RDMABuffer(tensor_or_memoryview)`` registers memory in its owner; the small handle travels to
any actor, which calls ``read_into(dst)`` / ``write_from(src)`` without involving the owner's
actor loop. Backends are chosen per transfer at run time (see :mod:`monarch.rdma._config`):
``ibverbs`` (pyverbs; across hosts and GPU memory), ``cma`` (same host, ``process_vm_readv``,
no owner CPU) and ``tcp`` (across hosts without verbs). torch and pyverbs are imported lazily.

On the IDL path the handle is the ``RDMABuffer`` struct of ``/monarch/actor.capnp``: importing
this package registers its converter with the capnp codec (generated modules that use
``M.RDMABuffer`` import it).
"""

from __future__ import annotations

from monarch._core.errors import RDMAError, RDMAUnavailableError
from monarch._core.exports import publish

from ._buffer import (
    RDMAAction,
    RDMABuffer,
    _rebuild,  # noqa: F401  # unpickles handles as monarch.rdma._rebuild
    get_rdma_backend,
    is_ibverbs_available,
    is_rdma_available,
)
from ._capnp import RDMA_BUFFER_NODE_ID as _RDMA_BUFFER_NODE_ID  # noqa: F401  # registers the IDL adapter
from ._config import RDMAConfig, configure
from ._engine import RDMAReadTransferWarning, RDMATcpFallbackWarning, RDMAWriteTransferWarning

__all__ = [
    "RDMAAction",
    "RDMABuffer",
    "RDMAConfig",
    "RDMAError",
    "RDMAReadTransferWarning",
    "RDMATcpFallbackWarning",
    "RDMAUnavailableError",
    "RDMAWriteTransferWarning",
    "configure",
    "get_rdma_backend",
    "is_ibverbs_available",
    "is_rdma_available",
]

publish(globals(), __all__, __name__)
