"""The pickle payload codec: deep values, out-of-band buffers."""

from __future__ import annotations

from monarch._transport.pickle_codec import dumps, loads
from monarch.testing import proc_mesh

from tests.runtime.feature_actors import Nester


def _depth(value: object) -> int:
    n = 0
    while isinstance(value, list) and value:
        value, n = value[0], n + 1
    return n


def _nested(depth: int) -> list[object]:
    out: list[object] = []
    for _ in range(depth):
        out = [out]
    return out


def test_a_value_nested_thousands_deep_round_trips() -> None:
    data, bufs = dumps(_nested(20_000))
    assert _depth(loads(data, bufs)) == 20_000


def test_large_bytes_deep_in_containers_still_round_trip() -> None:
    blob = bytes(range(256)) * 1024
    value: object = blob
    for _ in range(12):
        value = [value]
    data, bufs = dumps(value)
    back = loads(data, bufs)
    for _ in range(12):
        back = back[0]
    assert back == blob


def test_an_endpoint_result_nested_900_deep_reaches_the_caller() -> None:
    with proc_mesh({"gpus": 1}) as procs:
        mesh = procs.spawn("nester", Nester)
        assert _depth(mesh.nested.call_one(900).get(30)) == 900


def test_values_encode_while_another_thread_is_still_importing_torch(monkeypatch) -> None:
    # a spawn decoded off the loop may be importing torch while the loop encodes a reply: a
    # half-initialised torch (no Tensor yet) in sys.modules must not break encoding
    import sys
    import types

    from monarch._transport.pickle_codec import dumps, loads

    monkeypatch.setitem(sys.modules, "torch", types.ModuleType("torch"))
    payload, bufs = dumps((RuntimeError("refused"), {"x": [1, 2]}))
    err, rest = loads(payload, [memoryview(b) for b in bufs])
    assert str(err) == "refused" and rest == {"x": [1, 2]}
