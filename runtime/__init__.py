"""monarch-idl: a typed distributed actor framework for PyTorch, API-compatible with Meta Monarch.

Public modules: :mod:`monarch.actor` (the actor API), :mod:`monarch.stubs` (names generated code
uses), :mod:`monarch.config`, :mod:`monarch.testing`, :mod:`monarch.rdma`.
"""

__version__ = "0.1.0"
