"""Distributed tensors (Meta Monarch's tensor engine): ``with procs.activate():`` torch ops on
``monarch.Tensor`` handles run on every rank of a ProcMesh; ``Tensor.reduce`` combines them over
named mesh dimensions (gloo on CPU); ``fetch_shard``/``inspect`` bring a rank's values back.

Layer 5. torch loads on first use of a name that needs it, not at ``import monarch.tensor``: a
worker proc unpickles its ``TensorWorker`` class on its event loop, where a torch import would
stall its heartbeats. The names users write (``monarch.Tensor``, ``monarch.fetch_shard``,
``monarch.inspect``, ``monarch.remote``, ``monarch.no_mesh``) are exported by ``monarch`` itself.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._errors import TensorOpError

if TYPE_CHECKING:
    from ._api import Remote as Remote
    from ._api import fetch_shard as fetch_shard  # the public home of these is ``monarch``
    from ._api import inspect as inspect
    from ._api import no_mesh as no_mesh
    from ._api import remote as remote
    from ._tensor import Tensor as Tensor

TensorOpError.__module__ = "monarch.tensor"

__all__ = ["Remote", "TensorOpError"]

_LAZY = {
    "Remote": "._api",
    "fetch_shard": "._api",
    "inspect": "._api",
    "no_mesh": "._api",
    "remote": "._api",
    "Tensor": "._tensor",
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
