"""monarch-idl: a typed distributed actor framework for PyTorch, API-compatible with Meta Monarch.

Public modules: :mod:`monarch.actor` (the actor API), :mod:`monarch.stubs` (names generated code
uses), :mod:`monarch.config`, :mod:`monarch.testing`, :mod:`monarch.rdma`, :mod:`monarch.tensor`.

The tensor engine's names that Monarch programs use from the top level (``monarch.Tensor``,
``monarch.fetch_shard``, ``monarch.inspect``, ``monarch.remote``, ``monarch.no_mesh``) and its
placements (``monarch.distribute``, ``monarch.fetch``, ``monarch.from_local``, ``monarch.Shard``,
``monarch.Replicate``, ``monarch.Partial``) load :mod:`monarch.tensor` (and torch, except for the
placement classes) on first access, so ``import monarch`` stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

__all__ = [
    "Partial",
    "Replicate",
    "Shard",
    "Tensor",
    "distribute",
    "fetch",
    "fetch_shard",
    "from_local",
    "inspect",
    "no_mesh",
    "remote",
]


def __getattr__(name: str) -> Any:
    if name in __all__:
        # by name, not ``from .tensor import``: this package is layer 1 and must not depend on
        # layer 5 at import time; the attribute is the only way in, resolved on first use
        value = getattr(importlib.import_module("monarch.tensor"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'monarch' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
