"""``M.RDMABuffer`` on the IDL path: the struct's adapter, generated structs and endpoints."""

from __future__ import annotations

import capnp
import pytest
from monarch._idl import get_adapter, idl_import_path
from monarch.generated.parameter_server_rdma import (
    ParameterServer,
    Weights,
    Worker,
    WorkerMesh,
    _WorkerStepParams,
)
from monarch.rdma import RDMABuffer
from monarch.rdma._capnp import RDMA_BUFFER_NODE_ID

pytestmark = pytest.mark.rdma


def test_adapter_node_id_is_the_schemas_rdma_buffer_struct():
    schema = capnp.SchemaParser().load(f"{idl_import_path()}/monarch/actor.capnp")
    assert schema.RDMABuffer.schema.node.id == RDMA_BUFFER_NODE_ID
    assert get_adapter(RDMA_BUFFER_NODE_ID).__class__.__name__ == "RDMABufferAdapter"


def test_struct_field_carries_a_handle_that_still_reads_the_memory():
    mem = bytearray(b"registered bytes" * 300)
    buf = RDMABuffer(memoryview(mem))
    try:
        payload, buffers = Weights(handle=buf, num_params=7)._encode()
        view = Weights._decode(memoryview(bytearray(payload)), buffers)
        assert view.num_params == 7 and view.handle is not None
        assert view.handle._desc == buf._desc and view.handle.size == len(mem)
        dst = bytearray(len(mem))
        view.handle.read_into(memoryview(dst)).get(timeout=30)
        assert dst == mem
        assert Weights.from_bytes(view.to_bytes()).handle._desc == buf._desc  # sends on unchanged
    finally:
        buf.drop().get(timeout=30)


def test_unset_field_reads_none_and_a_wrong_value_raises_type_error():
    assert Weights._decode(Weights()._encode()[0], []).handle is None
    with pytest.raises(TypeError, match="needs an RDMABuffer, got bytes"):
        _WorkerStepParams(server=None, weights=b"not a handle")._encode()  # type: ignore[arg-type]


class Server(ParameterServer):
    def __init__(self) -> None:
        self.mem = bytearray(bytes(range(256)) * 64)
        self.buf = RDMABuffer(memoryview(self.mem))

    def weights(self) -> Weights:
        return Weights(handle=self.buf, num_params=len(self.mem) // 4)

    def push_gradients(self, grad):
        self.mem[: grad.numel()] = bytes(grad.numel())

    def apply(self) -> int:
        return 0

    def accuracy(self) -> float:
        return float(sum(self.mem[:16]))


class Reader(Worker):
    def step(self, server, weights: RDMABuffer) -> float:
        dst = bytearray(weights.size)
        weights.read_into(memoryview(dst)).get(timeout=30)
        return float(sum(dst))


@pytest.fixture
def procs():
    from monarch.actor import this_host

    meshes = [this_host().spawn_procs(per_host={"gpus": n}) for n in (1, 2)]
    try:
        yield meshes
    finally:
        for m in meshes:
            m.stop().get(timeout=30)


def test_generated_endpoints_pass_handles_as_results_struct_fields_and_parameters(procs):
    server_procs, reader_procs = procs
    server = server_procs.spawn("server", Server)
    readers: WorkerMesh = reader_procs.spawn("readers", Reader)
    info = server.weights.call_one().get(timeout=30)
    assert info.handle is not None and info.handle.size == 256 * 64
    sums = readers.step.call(server, info.handle).get(timeout=60)
    assert list(sums.values()) == [float(sum(range(256)) * 64)] * 2
