"""The client-to-worker vocabulary of the tensor engine: references and failure records.

Commands travel as plain tuples (cheap to pickle); only the two small classes here cross the wire.
Imported by the client and by the worker; stdlib only.
"""

from __future__ import annotations

from typing import Any

# command tags (first element of every command tuple)
DEFINE_FN = 0  # (DEFINE_FN, fid, spec): spec is a callable, ("attr", name) or ("path", "mod.fn")
CALL = 1  # (CALL, fid, out_ids, args, kwargs): run function fid; tensor leaves of its result -> out_ids
RANK = 2  # (RANK, out_id, dims): this rank's (combined) coordinate along dims, a 0-d int64 tensor
REDUCE = 3  # (REDUCE, out_id, in_id, dims, reduction, scatter, inplace, shape, dtype): the input's
STORE = 4  # (STORE, host, port): where the collectives' TCPStore listens
SYNC = 5  # (SYNC, seq, ranks, out_ids): an actor call at this point of the op order (see _rref)
PLACE = 6  # (PLACE, out_id, in_id, global_shape, src, steps): redistribute (_redistribute)


class Ref:
    """A worker-side tensor named by its id inside a command's arguments."""

    __slots__ = ("id",)

    def __init__(self, id: int) -> None:
        self.id = id

    def __reduce__(self) -> tuple[Any, ...]:
        return (Ref, (self.id,))

    def __repr__(self) -> str:
        return f"Ref({self.id})"


class Poison:
    """Stands in a worker's store for a tensor whose op failed on that rank (or whose inputs had).

    Attributes:
        rank: the coordinates of the rank where the op failed, e.g. ``{"gpus": 1}``.
        op: the name of the failed op.
        error: the remote exception, as ``Type: message``.
        traceback: the remote traceback, formatted.
    """

    __slots__ = ("error", "op", "rank", "traceback")

    def __init__(self, rank: dict[str, int], op: str, error: str, traceback: str) -> None:
        self.rank = rank
        self.op = op
        self.error = error
        self.traceback = traceback

    def message(self) -> str:
        return f"{self.op} failed on rank {self.rank}: {self.error}"
