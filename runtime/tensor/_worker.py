"""The per-proc tensor store actor: one ``TensorWorker`` per point of an activated ProcMesh.

A thin actor over ``_store.TensorStore``. torch is imported in ``__init__`` (on the actor's own
thread), not when this module loads: the spawn message is unpickled on the proc's event loop, and
a multi-second torch import there would stall the proc's heartbeats (a loaded machine then
reports the proc hung).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ..actor import Actor, context, endpoint

if TYPE_CHECKING:
    import torch


class TensorWorker(Actor):
    """Holds this rank's tensors and runs the tensor engine's commands (spawned by
    ``ProcMesh.activate()``).

    Args:
        labels: the activated mesh's dimension names.
        sizes: its sizes.
        timeout_s: bound on every collective (gloo group timeout).
        token: the client's token (actors on this proc find this store by it).
    """

    def __init__(
        self, labels: list[str], sizes: list[int], timeout_s: float, token: str = ""
    ) -> None:
        point = context().actor_instance.rank
        store = importlib.import_module("monarch.tensor._store")
        self._store = store.TensorStore(
            labels, sizes, {k: point[k] for k in labels}, timeout_s, point.rank, token
        )

    @endpoint
    def run(self, deletes: list[int], cmds: list[tuple[Any, ...]]) -> None:
        """Run ``cmds`` in order, then drop ``deletes`` (sent with ``broadcast``; never raises:
        a failing command poisons its outputs)."""
        self._store.run(deletes, cmds)

    @endpoint
    def fetch(self, ids: list[int]) -> list[torch.Tensor]:
        """The tensors ``ids`` of this rank.

        Raises:
            TensorOpError: one of them is poisoned (names the rank, op and remote exception).
        """
        return self._store.fetch(ids)  # type: ignore[no-any-return]

    @endpoint
    def call_value(self, fid: int, args: Any, kwargs: Any) -> Any:
        """Run remote function ``fid`` (defined by an earlier batch) on this rank's local tensors
        and return its value (``Remote.call`` and the other adverbs of ``monarch.remote``).

        Raises:
            TensorOpError: an argument's tensor failed on this rank (names the rank and op).
            Exception: whatever the function raises (the caller gets it as ``ActorError``).
        """
        return self._store.call_value(fid, args, kwargs)

    @endpoint
    def device_info(self) -> dict[str, Any]:
        """This rank's CUDA state: ``available``, ``count`` (devices this proc sees), ``index``
        (its device, ``cuda:LOCAL_RANK``), ``torch``, ``nccl``, ``host``."""
        return self._store.device_info()  # type: ignore[no-any-return]

    @endpoint
    def stored(self) -> list[int]:
        """The ids this worker holds (for tests and debugging)."""
        return self._store.stored()  # type: ignore[no-any-return]
