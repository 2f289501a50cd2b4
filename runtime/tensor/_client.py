"""The client side of one activated ProcMesh: its tensor-store actors, ids, and the batch of
commands not yet sent.

Ops are appended to a batch and sent as one ``broadcast`` per flush (one message per rank); a
flush happens before every fetch, when ``activate()`` exits and every ``MAX_BATCH`` commands.
Per-sender FIFO order (the router's) keeps a fetch behind the ops it depends on. Handles that
are garbage-collected add their ids to ``deletes`` (from any thread), sent with the next batch.
"""

from __future__ import annotations

import itertools
import threading
import uuid
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .._core.future import Future
from ..config import get_global_config
from ._wire import DEFINE_FN, STORE
from ._worker import TensorWorker

if TYPE_CHECKING:
    import torch

    from ..actor import ProcMesh

MAX_BATCH = 1024


class MeshClient:
    """The tensor engine's state for one ProcMesh (created by its first ``activate()``)."""

    def __init__(self, procs: ProcMesh) -> None:
        ext = procs.extent
        self.labels: list[str] = list(ext.labels)
        self.sizes: list[int] = list(ext.sizes)
        self.procs = procs
        self.token = uuid.uuid4().hex  # names this client's stores on the procs (see _rref)
        cfg = get_global_config()
        self.timeout_s = cfg.tensor_collective_timeout_s
        self._store_host = cfg.tensor_store_host
        self.workers: Any = procs.spawn(
            "tensor_engine", TensorWorker, self.labels, self.sizes, self.timeout_s, self.token
        )
        self._run: Any = self.workers.run
        self._seqs = itertools.count(1)
        self.cmds: list[tuple[Any, ...]] = []
        self.deletes: list[int] = []
        self._ids = itertools.count(1)
        self._fids: dict[Any, int] = {}
        self._store: Any = None
        self._lock = threading.Lock()
        self.cuda_checked = False  # every rank has CUDA (check_cuda ran)

    def __repr__(self) -> str:
        return f"<MeshClient extent={dict(zip(self.labels, self.sizes))} pending={len(self.cmds)}>"

    def new_id(self) -> int:
        return next(self._ids)

    def new_seq(self) -> int:
        """The next SYNC point's number (increasing: the workers wait for each in turn)."""
        return next(self._seqs)

    def fn_id(self, fn: Callable[..., Any] | str) -> int:
        """The id the workers know ``fn`` by (defined on first use, in the same batch)."""
        fid = self._fids.get(fn)
        if fid is None:
            fid = len(self._fids) + 1
            self._fids[fn] = fid
            self.cmds.append((DEFINE_FN, fid, _spec(fn)))
        return fid

    def push(self, cmd: tuple[Any, ...]) -> None:
        self.cmds.append(cmd)
        if len(self.cmds) >= MAX_BATCH:
            self.flush()

    def ensure_store(self) -> None:
        """Host the TCPStore the workers' gloo groups meet at (in this process, on first use)."""
        if self._store is not None:
            return
        import torch.distributed as dist

        host = self._store_host
        self._store = dist.TCPStore(  # type: ignore[attr-defined]  # exported by torch.distributed at run time
            host, 0, _prod(self.sizes) + 1, True, wait_for_workers=False
        )
        self.cmds.append((STORE, host, self._store.port))

    def flush(self) -> None:
        """Send the pending batch (and deletes) to every rank, in one message per rank."""
        with self._lock:
            cmds, self.cmds = self.cmds, []
            deletes, self.deletes = self.deletes, []
        if cmds or deletes:
            # straight to the mesh, past Endpoint.broadcast's tensor hook: that hook looks for
            # handles in the arguments, and walking a batch of commands (which hold none) cost
            # ~40% of the client's time per op (py-spy, benchmarks/tensor_dispatch.py)
            run = self._run
            run._mesh._invoke(run._spec, "broadcast", (deletes, cmds), {})

    def fetch(self, ids: list[int], coords: dict[str, int]) -> Future[list[torch.Tensor]]:
        self.flush()
        for k in coords:
            if k not in self.labels:
                raise KeyError(f"mesh {dict(zip(self.labels, self.sizes))} has no dimension {k!r}")
        target = self.workers.slice(**coords) if coords else self.workers
        for label in self.labels:
            if label not in coords:
                target = target.slice(**{label: 0})
        return target.fetch.call_one(ids)  # type: ignore[no-any-return]

    def check_cuda(self) -> None:
        """Before the first op that makes a CUDA tensor on this mesh: every rank must have CUDA
        (one round trip, once per mesh).

        Raises:
            CUDAUnavailableError: ranks without CUDA, named with their torch build.
        """
        if self.cuda_checked:
            return
        vm = self.workers.device_info.call().get(self.timeout_s)
        missing = [(dict(p), v) for p, v in vm.items() if not v["available"]]
        if missing:
            from ._errors import CUDAUnavailableError

            point, info = missing[0]
            raise CUDAUnavailableError(
                f"a CUDA tensor on {self!r}: CUDA is not available on {len(missing)} of "
                f"{len(vm)} ranks, e.g. {point} on host {info['host']} (torch {info['torch']}: "
                "torch.cuda.is_available() is False); keep the tensors on the CPU (no device=, "
                "or device='cpu') to run there with gloo"
            )
        self.cuda_checked = True

    def stored(self) -> list[list[int]]:
        """Every rank's stored ids (after flushing pending deletes), by flat rank."""
        self.flush()
        vm = self.workers.stored.call().get(self.timeout_s)
        return [v for _, v in sorted(vm.items(), key=lambda kv: kv[0].rank)]


def _prod(xs: list[int]) -> int:
    out = 1
    for x in xs:
        out *= x
    return out


def _spec(fn: Any) -> Any:
    if isinstance(fn, str):
        return ("path", fn)
    owner = getattr(fn, "__self__", None)
    if getattr(fn, "__name__", None) == "__get__" and type(owner).__name__ == "getset_descriptor":
        return ("attr", getattr(owner, "__name__", ""))
    return fn


_clients: weakref.WeakKeyDictionary[Any, MeshClient] = weakref.WeakKeyDictionary()
_clients_lock = threading.Lock()


def client_for(procs: ProcMesh) -> MeshClient:
    """The MeshClient of ``procs`` (its workers are spawned on first call)."""
    with _clients_lock:
        c = _clients.get(procs)
        if c is None:
            c = MeshClient(procs)
            _clients[procs] = c
        return c
