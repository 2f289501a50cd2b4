"""The GPU path's parts that run without a GPU: which device each handle's tensors live on (the
client's bookkeeping, checked against the commands it queues), the worker's NCCL groups
refusing clearly where CUDA is absent, and a CPU-only mesh refusing a CUDA tensor at the call
site. tests/tensor/test_gpu.py runs the scenarios themselves on CUDA/NCCL (marked ``gpu``)."""

from __future__ import annotations

import itertools

import pytest

torch = pytest.importorskip("torch")

import monarch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from monarch.tensor import CUDAUnavailableError, TensorOpError  # noqa: E402
from monarch.tensor._store import TensorStore  # noqa: E402
from monarch.tensor._tensor import activate  # noqa: E402
from monarch.tensor._wire import CALL, REDUCE, STORE  # noqa: E402
from monarch.testing import proc_mesh  # noqa: E402

WAIT_S = 60.0


class RecordingClient:
    """Stands for a MeshClient: records the commands the client side queues (nothing is sent)."""

    def __init__(self) -> None:
        self.labels = ["gpus"]
        self.sizes = [2]
        self.cmds: list[tuple] = []
        self.deletes: list[int] = []
        self.cuda_checked = True  # as after a successful check on a CUDA mesh
        self._ids = itertools.count(1)
        self._fids: dict = {}

    def new_id(self) -> int:
        return next(self._ids)

    def fn_id(self, fn) -> int:
        return self._fids.setdefault(fn, len(self._fids) + 1)

    def push(self, cmd: tuple) -> None:
        self.cmds.append(cmd)

    def ensure_store(self) -> None:
        pass

    def check_cuda(self) -> None:
        raise AssertionError("checked already")

    def flush(self) -> None:
        pass


def test_handles_know_which_device_their_tensors_live_on() -> None:
    client = RecordingClient()
    with activate(client):
        c = torch.rand(3, 4, device="cuda")
        p = torch.zeros(3, 4)
        with torch.device("cuda"):  # torch's default-device context reaches the factories too
            d = torch.ones(2)
        mixed = c * 2 + 1  # ops follow their CUDA input
        back = c.cpu()
        moved = p.to("cuda")
        also = p.cuda()
        like = torch.zeros_like(p, device="cuda:1")  # an index names a device type only
        prod = c @ c.T
        s = c.reduce("gpus", "sum")
        g = p.reduce("gpus", "sum")
    assert [t.device.type for t in (c, d, mixed, moved, also, like, prod, s)] == ["cuda"] * 8
    assert [t.device.type for t in (p, back, g)] == ["cpu"] * 3
    assert c.is_cuda and not p.is_cuda and "device=cuda" in repr(c) and "device" not in repr(p)
    assert moved.shape == (3, 4) and moved._id != p._id  # a new tensor on the ranks
    calls = [cmd for cmd in client.cmds if cmd[0] == CALL]
    assert calls[0][4] == {"device": "cuda"}  # the worker reads "cuda" as its own device
    reduces = [cmd for cmd in client.cmds if cmd[0] == REDUCE]
    assert reduces[0][-1] == "cuda" and len(reduces[1]) == 9  # a CPU reduce: as before


def test_an_nccl_reduce_where_cuda_is_absent_poisons_with_a_clear_error() -> None:
    server = dist.TCPStore("127.0.0.1", 0, 1, True, wait_for_workers=False)  # type: ignore[attr-defined]
    store = TensorStore(["gpus"], [1], {"gpus": 0}, 5.0)
    store.put(1, torch.ones(3))
    store.run(
        [],
        [
            (STORE, "127.0.0.1", server.port),
            (REDUCE, 2, 1, ("gpus",), "sum", False, False, (3,), torch.float32, "cuda"),
        ],
    )
    with pytest.raises(TensorOpError, match="CUDA is not available on this rank") as info:
        store.fetch([2])
    assert info.value.rank == {"gpus": 0}
    # the same reduce of the CPU tensor runs over gloo
    store.run([], [(REDUCE, 3, 1, ("gpus",), "sum", False, False, (3,), torch.float32)])
    assert torch.equal(store.fetch([3])[0], torch.ones(3))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a mesh without CUDA")
def test_a_cuda_tensor_on_a_mesh_without_cuda_raises_at_the_call_site() -> None:
    with proc_mesh({"gpus": 2}, timeout_s=30.0) as procs:
        with procs.activate():
            with pytest.raises(
                CUDAUnavailableError, match=r"CUDA is not available on 2 of 2 ranks"
            ):
                torch.zeros(2, device="cuda")
            t = torch.arange(3.0) + procs.rank_tensor("gpus")  # the mesh keeps working on the CPU
            s = t.reduce("gpus", "sum")
        assert t.device.type == "cpu"
        assert torch.equal(monarch.fetch_shard(s, gpus=1).get(WAIT_S), torch.arange(3.0) * 2 + 1)
