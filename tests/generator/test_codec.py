"""The Cap'n Proto payload codec of generated endpoints (monarch._idl)."""

from __future__ import annotations

import inspect

import pytest
import torch
from monarch._transport.codec import ENCODING_CAPNP
from monarch.generated import example as ex


def _received(buffers: list[object]) -> list[memoryview]:
    # what the transport hands over: writable views of freshly received buffers
    return [memoryview(bytearray(memoryview(b).cast("B"))) for b in buffers]  # type: ignore[arg-type]


def test_call_round_trip_gives_positional_arguments_in_schema_order() -> None:
    codec = ex._WORKER_TRAIN.codec
    assert codec is not None and codec.encoding == ENCODING_CAPNP
    batch = ex.Batch(step=7, inputs=torch.ones(2, 3), tags=["a", "b"])
    payload, buffers = codec.encode_call((batch,), {})
    args, kwargs = codec.decode_call(memoryview(payload), _received(buffers))
    assert kwargs == {}
    (got,) = args
    assert isinstance(got, ex.Batch) and got.step == 7 and list(got.tags) == ["a", "b"]
    assert torch.equal(got.inputs, torch.ones(2, 3))


def test_result_kinds_single_struct_and_none() -> None:
    train, collect, set_coord = (
        ex._WORKER_TRAIN.codec,
        ex._COORDINATOR_COLLECT.codec,
        ex._WORKER_SET_COORDINATOR.codec,
    )
    assert train is not None and collect is not None and set_coord is not None
    p, b = train.encode_result(0.25)
    assert train.decode_result(memoryview(p), _received(b)) == 0.25
    p, b = collect.encode_result(ex.CoordinatorCollectResult(mean=1.5, total=3))
    r = collect.decode_result(memoryview(p), _received(b))
    assert (r.mean, r.total) == (1.5, 3)
    with pytest.raises(TypeError):
        collect.encode_result(1.5)
    p, b = set_coord.encode_result(None)
    assert set_coord.decode_result(memoryview(p), _received(b)) is None


def test_16_mib_tensor_travels_out_of_band_and_decodes_as_a_view() -> None:
    codec = ex._WORKER_TRAIN.codec
    assert codec is not None
    tensor = torch.randn(4 * 1024 * 1024)  # 16 MiB of float32
    payload, buffers = codec.encode_call((ex.Batch(inputs=tensor),), {})
    assert len(payload) < 1024  # the tensor is not in the message
    assert memoryview(buffers[0]).nbytes == tensor.numel() * 4
    assert memoryview(buffers[0]).obj is not None  # a view of the tensor's memory, not a copy
    received = _received(buffers)
    (batch,), _ = codec.decode_call(memoryview(payload), received)
    got = batch.inputs
    assert torch.equal(got, tensor)
    start = received[0].obj
    assert got.data_ptr() == torch.frombuffer(start, dtype=torch.uint8).data_ptr()  # zero-copy


def test_large_data_field_decodes_as_memoryview_of_the_buffer() -> None:
    codec = ex._WORKER_ECHO_BLOB.codec
    assert codec is not None
    blob = bytes(range(256)) * 64
    payload, buffers = codec.encode_call((blob,), {})
    (got,), _ = codec.decode_call(memoryview(payload), _received(buffers))
    assert isinstance(got, memoryview) and bytes(got) == blob
    (small,), _ = codec.decode_call(
        *[memoryview(x) if i == 0 else x for i, x in enumerate(codec.encode_call((b"hi",), {}))]
    )
    assert bytes(small) == b"hi"


def test_endpoint_spec_carries_signature_and_options() -> None:
    spec = ex._WORKER_ECHO_BLOB
    assert (spec.name, spec.py_name, spec.ordinal, spec.timeout_s) == (
        "echoBlob",
        "echo_blob",
        4,
        30.0,
    )
    assert list(inspect.signature(ex.Worker.echo_blob).parameters) == ["self", "blob"]
    assert spec.signature is not None and list(spec.signature.parameters) == ["blob"]
    assert ex._WORKER_PROGRESS.stream
    assert ex.Worker.train.__monarch_endpoint__ is ex._WORKER_TRAIN
    assert ex.Worker.__monarch_mesh__ is ex.WorkerMesh


def test_union_and_group_views_answer_like_built_structs() -> None:
    m = ex.Metric(name="n", count=3)
    view = ex.Metric.from_bytes(m.to_bytes())
    assert view.which() == "count" and view.count == 3 and view == m
    with pytest.raises(AttributeError):
        _ = view.scalar
    r = ex.Report.from_bytes(ex.Report().to_bytes())
    assert r.phase is ex.Phase.training and r.config.learning_rate == pytest.approx(0.01)
    with pytest.raises(ValueError):
        ex.Metric(scalar=1.0, count=2)


def test_received_struct_kept_and_read_many_times_stays_readable() -> None:
    # every read of a pointer counts against the message's traversal limit: a view kept (a
    # config struct) and read in a loop once failed after ~8k reads of a Text field
    report = ex.Report(worker=3, metrics=[ex.Metric(name="loss", text="t")])
    view = ex.Report.from_bytes(report.to_bytes())
    for _ in range(30_000):
        assert view.metrics[0].name == "loss" and view.metrics[0].text == "t"
    for _ in range(20_000):
        view.to_bytes()  # sent on again and again
    assert ex.Report.from_bytes(view.to_bytes()) == report
