"""The tensor engine's errors: an op failed on a rank and its result was fetched; a CUDA tensor
asked of a mesh whose ranks have no CUDA."""

from __future__ import annotations

from .._core.errors import MonarchError


class TensorOpError(MonarchError):
    """A fetched tensor (or one it depends on) failed on a worker (Monarch's ``RemoteException``).

    Attributes:
        rank: coordinates of the rank where the op failed, e.g. ``{"gpus": 1}``.
        op: the op that failed (``matmul``, ``reduce(('gpus',), 'sum', scatter=False)``).
        error: the remote exception as ``Type: message``.
        remote_traceback: its traceback, formatted in the worker.
    """

    def __init__(self, rank: dict[str, int], op: str, error: str, remote_traceback: str) -> None:
        self.rank = rank
        self.op = op
        self.error = error
        self.remote_traceback = remote_traceback
        super().__init__(rank, op, error, remote_traceback)

    def __str__(self) -> str:
        tb = f"\nTraceback of where the remote op failed:\n{self.remote_traceback}" if self.remote_traceback else ""
        return f"{self.op} failed on rank {self.rank}: {self.error}{tb}"


class CUDAUnavailableError(MonarchError, RuntimeError):
    """An op would make a CUDA tensor on a mesh where some rank has no CUDA: raised at the call
    site, before the op is sent (the message names a rank, its host and its torch build)."""
