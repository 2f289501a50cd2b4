"""``monarch.Tensor`` handles passed to generated (IDL) endpoints on a {"gpus": 2} mesh of real
procs: an ``M.Tensor`` field given a handle (a parameter, or a field of a struct the caller
built) arrives as that rank's local tensor itself, at its place in the op stream; the schema
still checks the other values at the call site and the result comes back as its struct. Every
value is checked against a local recomputation."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

import monarch  # noqa: E402
from monarch.actor import ActorError, context  # noqa: E402
from monarch.generated.example import Batch, Report, Worker  # noqa: E402
from monarch.generated.parameter_server import ParameterServer, Versioned  # noqa: E402
from monarch.generated.trainer import GradientReducer  # noqa: E402
from monarch.tensor import TensorOpError  # noqa: E402
from monarch.testing import proc_mesh  # noqa: E402

WAIT_S = 60.0


class RankServer(ParameterServer):
    """Subtracts the gradients it is pushed from its weights; scales them in place after."""

    def __init__(self) -> None:
        self.weights = torch.zeros(4)
        self.version = 0

    def pull(self) -> Versioned:
        return Versioned(version=self.version, weights=self.weights)

    def push(self, grads: torch.Tensor, worker: int) -> int:
        self.weights = self.weights - grads
        grads.mul_(10)  # the rank's own tensor: ops issued after the call see this
        self.version += worker
        return self.version


class BatchWorker(Worker):
    """Reads the M.Tensor field of a struct argument."""

    def train(self, batch: Batch) -> float:
        rank = context().actor_instance.rank.rank
        return float(batch.inputs.sum()) * 100 + rank + batch.step + len(batch.tags)

    def report(self) -> Report:
        return Report(worker=0)

    def progress(self, steps: int):  # type: ignore[no-untyped-def]  # not used here
        yield from ()

    def set_coordinator(self, coordinator) -> None:  # type: ignore[no-untyped-def]
        return None

    def echo_blob(self, blob: bytes | memoryview) -> bytes | memoryview:
        return bytes(blob)


class EchoReducer(GradientReducer):
    """An explicit-response-port endpoint (answers on its port)."""

    def all_reduce(self, port, step: int, grads: torch.Tensor) -> None:  # type: ignore[no-untyped-def]
        port.send(grads)


@pytest.fixture(scope="module")
def mesh():
    with proc_mesh({"gpus": 2}, timeout_s=30.0) as procs:
        yield procs, procs.spawn("servers", RankServer), procs.spawn("workers", BatchWorker)


def test_a_handle_in_an_m_tensor_parameter_arrives_as_the_ranks_local_tensor(mesh) -> None:
    procs, servers, _ = mesh
    with procs.activate():
        g = torch.ones(4) * (procs.rank_tensor("gpus") + 1)
        versions = servers.push.call(g, 3).get(WAIT_S)  # waits: the call has run on every rank
        after = g + 1  # issued after the call: sees its in-place change
        one = servers.slice(gpus=0).push.call_one(g, 2)  # rank 0 only
    assert sorted(versions.values()) == [3, 3]
    assert one.get(WAIT_S) == 5  # rank 0's version: 3 + 2
    for gpus in range(2):
        want = torch.ones(4) * (gpus + 1)
        vg, va = monarch.fetch_shard((g, after), gpus=gpus).get(WAIT_S)
        assert torch.equal(vg, want * (100 if gpus == 0 else 10))  # scaled in place per push
        assert torch.equal(va, want * 10 + 1)
    for point, v in servers.pull.call().get(WAIT_S).items():
        gpus = point["gpus"]
        want = torch.ones(4) * (gpus + 1)
        # the result is the schema's struct, decoded on the client as for any IDL call
        assert isinstance(v, Versioned)
        assert torch.equal(v.weights, -want * (11 if gpus == 0 else 1))
        assert v.version == (5 if gpus == 0 else 3)


def test_a_handle_in_a_field_of_a_struct_argument_arrives_as_the_ranks_tensor(mesh) -> None:
    procs, _, workers = mesh
    with procs.activate():
        x = torch.arange(6, dtype=torch.float32).reshape(2, 3) * (procs.rank_tensor("gpus") + 1)
        losses = workers.train.call(Batch(step=7, inputs=x, labels=b"ab", tags=["a", "b"])).get(
            WAIT_S
        )
    for point, loss in losses.items():
        gpus = point["gpus"]
        assert loss == 15.0 * (gpus + 1) * 100 + gpus + 7 + 2


def test_schema_checks_and_misuse_raise_at_the_call_site(mesh) -> None:
    procs, servers, workers = mesh
    with procs.activate():
        g = torch.ones(4)
        with pytest.raises(ValueError, match="worker"):  # UInt32 out of range: nothing is sent
            servers.push.call(g, -1)
        with pytest.raises(TypeError, match="labels"):  # a handle fills only an M.Tensor field
            workers.train.call(Batch(step=1, inputs=g, labels=g, tags=[]))
        ok = servers.push.call(g, 0).get(WAIT_S)  # the mesh keeps working
    assert len(ok) == 2


def test_a_poisoned_handle_fails_the_call_without_running_the_endpoint(mesh) -> None:
    procs, servers, _ = mesh

    @monarch.remote(propagate=lambda t: t.clone())
    def fail_on_rank_1(t):
        if context().actor_instance.rank.rank == 1:
            raise RuntimeError("bad on rank 1")
        return t.clone()

    before = {p["gpus"]: v.version for p, v in servers.pull.call().get(WAIT_S).items()}
    with procs.activate():
        bad = fail_on_rank_1(torch.ones(4))
        fut = servers.push.call(bad, 1)
    with pytest.raises(ActorError) as info:
        fut.get(WAIT_S)
    assert isinstance(info.value.exception, TensorOpError)
    assert "bad on rank 1" in str(info.value.exception)
    after = {p["gpus"]: v.version for p, v in servers.pull.call().get(WAIT_S).items()}
    assert after == {0: before[0] + 1, 1: before[1]}  # rank 1's endpoint did not run


def test_an_explicit_port_endpoint_refuses_handles_before_anything_is_sent(mesh) -> None:
    procs, servers, _ = mesh
    reducers = procs.spawn("reducers", EchoReducer)
    with procs.activate():
        g = torch.ones(4)
        with pytest.raises(TypeError, match="explicitResponsePort"):
            reducers.all_reduce.call(1, g)
        ok = servers.push.call(g, 0)  # the op stream is not held up by the refused call
    assert len(ok.get(WAIT_S)) == 2
