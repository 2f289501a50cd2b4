"""One worker's tensor store and command executor (``TensorWorker`` runs it on its thread).

It holds the real local tensors by id, runs the client's batched commands in order (collectives
block only the actor's thread), and keeps a ``Poison`` where an op failed so that the failure
flows to dependents and surfaces at fetch, while the mesh keeps working. Semantics follow
Monarch's worker (python/monarch/worker in Meta Monarch).
"""

from __future__ import annotations

import importlib
import threading
import traceback
from collections.abc import Callable
from typing import Any

import torch
from torch.utils._pytree import tree_flatten

from . import _collectives, _devices, _redistribute
from ._errors import TensorOpError
from ._wire import CALL, DEFINE_FN, PLACE, RANK, REDUCE, STORE, SYNC, Poison, Ref

# this proc's stores by their client's token: an actor on the same proc reads and writes the
# store of its rank directly for ``rref`` and for handles passed to its endpoints (``_rref``)
LOCAL: dict[str, TensorStore] = {}


def _resolve(spec: Any) -> Callable[..., Any]:
    if callable(spec):
        return spec  # type: ignore[no-any-return]
    kind, name = spec
    if kind == "attr":  # a property getter of torch.Tensor (``t.T``)
        return lambda self: getattr(self, name)
    mod, _, attr = name.rpartition(".")
    fn = importlib.import_module(mod)
    for part in [attr]:
        fn = getattr(fn, part)
    return fn  # type: ignore[return-value]


def _fn_name(fn: Any) -> str:
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)


class TensorStore:
    """This rank's tensors and the executor of the tensor engine's commands.

    Args:
        labels: the activated mesh's dimension names.
        sizes: its sizes.
        point: this rank's coordinates, by label.
        timeout_s: bound on every collective (gloo group timeout), and on the wait for an
            actor call at a ``SYNC`` point.
        flat_rank: this rank's row-major rank in the mesh (``SYNC`` names ranks so).
        token: the client's token; the store registers itself in ``LOCAL`` under it.
    """

    def __init__(
        self,
        labels: list[str],
        sizes: list[int],
        point: dict[str, int],
        timeout_s: float,
        flat_rank: int = 0,
        token: str = "",
    ) -> None:
        self._coords = [point[label] for label in labels]
        self._rank = dict(zip(labels, self._coords))
        self._labels = labels
        self._sizes = sizes
        self._store: dict[int, Any] = {}
        self._fns: dict[int, Callable[..., Any]] = {}
        self._groups = _collectives.Groups(labels, sizes, self._coords, timeout_s)
        # LOCAL_RANK: the coordinate on the last (per-host) dimension; its CUDA device is bound
        # on the worker's thread by the first batch (_devices.rank_device)
        self.local_rank = self._coords[-1] if self._coords else 0
        self._bound = False
        self.flat_rank = flat_rank
        self.timeout_s = timeout_s
        # the SYNC hand-off with actors on this proc: ``reached`` is the last SYNC point this
        # worker has arrived at (it then blocks until the actor adds that seq to ``done``)
        self.cond = threading.Condition()
        self.reached = 0
        self.done: set[int] = set()
        if token:
            LOCAL[token] = self

    # -- commands -------------------------------------------------------------------------------

    def run(self, deletes: list[int], cmds: list[tuple[Any, ...]]) -> None:
        """Run ``cmds`` in order, then drop ``deletes`` (sent with ``broadcast``; never raises:
        a failing command poisons its outputs)."""
        store = self._store
        if not self._bound:
            self._bind_device()
        for cmd in cmds:
            tag = cmd[0]
            if tag == CALL:
                self._call(cmd[1], cmd[2], cmd[3], cmd[4])
            elif tag == DEFINE_FN:
                try:
                    self._fns[cmd[1]] = _resolve(cmd[2])
                except Exception as exc:  # the error surfaces at the first call of it
                    self._fns[cmd[1]] = _raiser(exc)
            elif tag == REDUCE:
                self._reduce(*cmd[1:])
            elif tag == RANK:
                self._store[cmd[1]] = self._rank_of(cmd[2])
            elif tag == STORE:
                self._groups.set_store(cmd[1], cmd[2])
            elif tag == SYNC:
                self._sync(cmd[1], cmd[2], cmd[3])
            elif tag == PLACE:
                _redistribute.run(self, *cmd[1:])
        # after the commands: a handle made and dropped within one batch is used by it first (the
        # client sends only ids of handles that were dead when the batch left)
        for i in deletes:
            store.pop(i, None)

    def _bind_device(self) -> None:
        """Make this rank's CUDA device (``cuda:LOCAL_RANK``) current on the worker's thread, where
        the commands run: ``device="cuda"`` then means it. Nothing happens without CUDA."""
        self._bound = True
        try:
            self._groups.device = _devices.rank_device(self.local_rank)
        except Exception:  # a broken CUDA: its ops fail, with torch's error, when used
            self._groups.device = None

    @property
    def device(self) -> torch.device | None:
        """This rank's CUDA device, None without CUDA (or before the first batch)."""
        return self._groups.device  # type: ignore[no-any-return]

    def _sync(self, seq: int, ranks: list[int], out_ids: tuple[int, ...]) -> None:
        """An actor call at this point of the op order: let the actor of this rank in (it has
        been waiting for ``reached >= seq``), and block until it has run and stored its results
        (``done``), at most ``timeout_s``; then its outputs are poisoned."""
        if self.flat_rank not in ranks:
            return
        with self.cond:
            self.reached = seq
            self.cond.notify_all()
            ok = self.cond.wait_for(lambda: seq in self.done, self.timeout_s)
            self.done.discard(seq)
        if not ok:
            p = Poison(
                self._rank,
                "actor call",
                f"TimeoutError: the actor call did not run within {self.timeout_s} s",
                "",
            )
            for i in out_ids:
                self._store[i] = p

    def wait_reached(self, seq: int) -> bool:
        """(actor side) Wait until this worker has run every command before SYNC point ``seq``."""
        with self.cond:
            return self.cond.wait_for(lambda: self.reached >= seq, self.timeout_s)

    def signal_done(self, seq: int) -> None:
        """(actor side) The actor call of SYNC point ``seq`` has finished: release the worker."""
        with self.cond:
            self.done.add(seq)
            self.cond.notify_all()

    def poison(self, op: str, exc: BaseException) -> Poison:
        """A ``Poison`` for ``exc`` raised by ``op`` on this rank."""
        return self._poison(op, exc)

    def get(self, i: int) -> Any:
        """The stored value ``i`` (a tensor or a ``Poison``), or None."""
        return self._store.get(i)

    def put(self, i: int, v: Any) -> None:
        self._store[i] = v

    def _poison(self, op: str, exc: BaseException) -> Poison:
        tb = "".join(traceback.format_exception(exc))
        error = f"{type(exc).__name__}: {exc}"
        if self._groups.device is None and "cuda" in error.lower() and "CUDA is not available" not in error:
            error = f"{error} ({_devices.cuda_missing()})"  # torch's words name no rank's state
        return Poison(self._rank, op, error, tb)

    def _resolve_args(self, obj: Any, bad: list[Poison]) -> Any:
        if type(obj) is Ref:
            v = self._store.get(obj.id)
            if v is None:
                v = Poison(
                    self._rank,
                    "lookup",
                    f"KeyError: tensor {obj.id} is not on this worker (deleted?)",
                    "",
                )
            if type(v) is Poison:
                bad.append(v)
            return v
        if type(obj) is tuple:
            return tuple(self._resolve_args(o, bad) for o in obj)
        if type(obj) is list:
            return [self._resolve_args(o, bad) for o in obj]
        if type(obj) is dict:
            return {k: self._resolve_args(v, bad) for k, v in obj.items()}
        return obj

    def call_value(self, fid: int, args: Any, kwargs: Any) -> Any:
        """Run function ``fid`` on the local tensors named in ``args``/``kwargs``; its value.

        Raises:
            TensorOpError: an argument is poisoned (or not on this worker).
        """
        bad: list[Poison] = []
        a = self._resolve_args(args, bad)
        k = self._resolve_args(kwargs, bad)
        if bad:
            p = bad[0]
            raise TensorOpError(p.rank, p.op, p.error, p.traceback)
        return self._fns[fid](*a, **k)

    def _call(self, fid: int, out_ids: tuple[int, ...], args: Any, kwargs: Any) -> None:
        fn = self._fns[fid]
        bad: list[Poison] = []
        a = self._resolve_args(args, bad)
        k = self._resolve_args(kwargs, bad)
        store = self._store
        if bad:
            for i in out_ids:
                store[i] = bad[0]
            return
        try:
            out = fn(*a, **k)
            if type(out) is torch.Tensor:
                leaves = [out]
            else:
                leaves = [x for x in tree_flatten(out)[0] if isinstance(x, torch.Tensor)]
            if len(leaves) != len(out_ids):
                raise RuntimeError(
                    f"{_fn_name(fn)} returned {len(leaves)} tensors here, its propagation said {len(out_ids)}"
                )
        except Exception as exc:
            p = self._poison(_fn_name(fn), exc)
            for i in out_ids:
                store[i] = p
            return
        for i, t in zip(out_ids, leaves):
            store[i] = t

    def _rank_of(self, dims: tuple[str, ...]) -> torch.Tensor:
        r = 0
        for label, size, c in zip(self._labels, self._sizes, self._coords):
            if label in dims:
                r = r * size + c
        return torch.tensor(r, dtype=torch.long)

    def _reduce(
        self,
        out_id: int,
        in_id: int,
        dims: tuple[str, ...],
        reduction: str,
        scatter: bool,
        inplace: bool,
        shape: tuple[int, ...] | None = None,
        dtype: torch.dtype | None = None,
        device: str = "cpu",
    ) -> None:
        v = self._store.get(in_id)
        if v is None:
            v = Poison(
                self._rank,
                "reduce",
                f"KeyError: tensor {in_id} is not on this worker (deleted?)",
                "",
            )
        op = f"reduce({dims}, {reduction!r}, scatter={scatter})"
        # the client says where the tensor lives: a rank whose input is poisoned must still
        # join the same group as the others (NCCL for CUDA tensors, gloo for CPU ones)
        backend = "nccl" if device == "cuda" else "gloo"
        on = self._groups.device if backend == "nccl" else None
        try:
            pg, ri, g = self._groups.get(dims, backend)
            if reduction != "stack" and not scatter and shape is not None and dtype is not None:
                # all_reduce: the poison flags travel beside the data (one wait, not two)
                bad, out = _collectives.allreduce_checked(
                    pg,
                    ri,
                    g,
                    v if isinstance(v, torch.Tensor) else None,
                    shape,
                    dtype,
                    reduction,
                    inplace,
                    on,
                )
            else:
                bad, out = _collectives.flags_any(pg, ri, g, type(v) is Poison, on), None
            if type(v) is Poison:
                self._store[out_id] = v
                return
            if bad:
                self._store[out_id] = Poison(
                    self._rank,
                    op,
                    f"RuntimeError: the input is poisoned on group ranks {bad} along {dims}",
                    "",
                )
                return
            assert isinstance(v, torch.Tensor)
            if out is None:
                out = _collectives.reduce_tensor(pg, g, v, reduction, scatter, inplace)
            if inplace and out.data_ptr() != v.data_ptr():  # v was not contiguous: copy back
                v.copy_(out)
            self._store[out_id] = v if inplace else out
        except Exception as exc:
            self._groups.drop(dims, backend)
            self._store[out_id] = self._poison(op, exc)

    # -- queries --------------------------------------------------------------------------------

    def fetch(self, ids: list[int]) -> list[torch.Tensor]:
        """The tensors ``ids`` of this rank.

        Raises:
            TensorOpError: one of them is poisoned (names the rank, op and remote exception).
        """
        out = []
        for i in ids:
            v = self._store.get(i)
            if v is None:
                raise TensorOpError(
                    self._rank,
                    "fetch",
                    f"KeyError: tensor {i} is not on this worker (deleted?)",
                    "",
                )
            if type(v) is Poison:
                raise TensorOpError(v.rank, v.op, v.error, v.traceback)
            t = v.detach()
            out.append(t if t.device.type == "cpu" else t.cpu())  # fetches land on the CPU
        return out

    def device_info(self) -> dict[str, Any]:
        """This rank's CUDA state (``_devices.device_info``)."""
        return _devices.device_info(self.local_rank)

    def stored(self) -> list[int]:
        """The ids this worker holds (for tests and debugging)."""
        self_ids = sorted(self._store)
        return self_ids


def _raiser(exc: Exception) -> Callable[..., Any]:
    def fail(*args: Any, **kwargs: Any) -> Any:
        raise exc

    return fail
