"""Distributed tensors (Meta Monarch's tensor engine): ``with procs.activate():`` torch ops on
``monarch.Tensor`` handles run on every rank of a ProcMesh; ``Tensor.reduce`` combines them over
named mesh dimensions (gloo for CPU tensors, NCCL for CUDA ones, each rank on ``cuda:LOCAL_RANK``);
``fetch_shard``/``inspect`` bring a rank's values back to the client's CPU.

Layer 5. torch loads on first use of a name that needs it, not at ``import monarch.tensor``: a
worker proc unpickles its ``TensorWorker`` class on its event loop, where a torch import would
stall its heartbeats. The names users write (``monarch.Tensor``, ``monarch.fetch_shard``,
``monarch.inspect``, ``monarch.remote``, ``monarch.no_mesh``) are exported by ``monarch`` itself,
as are the placements of distributed tensors (``monarch.distribute``, ``monarch.fetch``,
``monarch.from_local``, ``monarch.Shard``, ``monarch.Replicate``, ``monarch.Partial``; see
docs/tensors.md). ``monarch.tensor.LocalShard`` is what a remote function or an endpoint gets for
a placed handle (its ``to_dtensor()`` gives a ``torch.distributed.tensor.DTensor``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .._core.errors import ShardingError
from ._errors import CUDAUnavailableError, TensorOpError

if TYPE_CHECKING:
    from ._api import Remote as Remote
    from ._api import fetch_shard as fetch_shard  # the public home of these is ``monarch``
    from ._api import inspect as inspect
    from ._api import no_mesh as no_mesh
    from ._api import remote as remote
    from ._distribute import distribute as distribute
    from ._distribute import fetch as fetch
    from ._distribute import from_local as from_local
    from ._placement import Partial as Partial
    from ._placement import Placement as Placement
    from ._placement import Replicate as Replicate
    from ._placement import Shard as Shard
    from ._redistribute import LocalShard as LocalShard
    from ._tensor import Tensor as Tensor

TensorOpError.__module__ = "monarch.tensor"
CUDAUnavailableError.__module__ = "monarch.tensor"
ShardingError.__module__ = "monarch.tensor"  # placements that do not fit (the only raiser)

__all__ = ["CUDAUnavailableError", "Remote", "ShardingError", "TensorOpError"]

_LAZY = {
    "Remote": "._api",
    "fetch_shard": "._api",
    "inspect": "._api",
    "no_mesh": "._api",
    "remote": "._api",
    "Tensor": "._tensor",
    "distribute": "._distribute",
    "fetch": "._distribute",
    "from_local": "._distribute",
    "Partial": "._placement",  # stdlib only: no torch import
    "Placement": "._placement",
    "Replicate": "._placement",
    "Shard": "._placement",
    "LocalShard": "._redistribute",
}


def __getattr__(name: str) -> Any:
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'monarch.tensor' has no attribute {name!r}")
    value = getattr(importlib.import_module(mod, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
