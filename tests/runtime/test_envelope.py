"""The pure-Python envelope codec against pycapnp and the schema: same bytes, same fields."""

from __future__ import annotations

import gc
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from monarch._core.errors import ProtocolError
from monarch._transport import envelope as E
from monarch._transport.envelope import Envelope, EnvelopeTemplate, decode_envelope, load_schema

S = load_schema()


def _layout(struct: Any) -> tuple[tuple[int, int], dict[str, tuple[int, str]]]:
    node = struct.schema.node
    fields = {f.name: (f.slot.offset, f.slot.type.which()) for f in node.struct.fields}
    return (node.struct.dataWordCount, node.struct.pointerCount), fields


def test_hardcoded_layout_matches_the_schema() -> None:
    size, fields = _layout(S.Envelope)
    assert size == E.ENVELOPE_SIZE
    pointers = sorted((off, name) for name, (off, kind) in fields.items() if kind in ("text", "data", "list", "struct"))
    assert tuple(name for _, name in pointers) == E.ENVELOPE_POINTERS
    data = {name: off for name, (off, kind) in fields.items() if kind not in ("text", "data", "list", "struct")}
    # "<HBxIQQQ": kind u16 @0, encoding u8 @2, flags u32 @1 (x4 bytes), seq/port/replyPort u64 @1..3
    assert data == {"kind": 0, "encoding": 2, "flags": 1, "seq": 1, "port": 2, "replyPort": 3}
    assert _layout(S.Hop)[0] == E.HOP_SIZE
    assert _layout(S.Part)[0] == E.PART_SIZE
    assert _layout(S.Part)[1] == {"rank": (0, "uint32"), "error": (32, "bool"), "length": (2, "uint32"), "buffers": (3, "uint32"), "last": (33, "bool")}
    assert _layout(S.Shape)[0] == E.SHAPE_SIZE
    assert list(S.Kind.schema.enumerants) == list(E.KINDS)


def _fill(env: Any, f: dict[str, Any]) -> Any:
    for k in ("kind", "origin", "seq", "actor", "endpoint", "port", "replyAddr", "replyPort", "encoding", "payload", "sender", "flags"):
        setattr(env, k, f[k])
    env.ranks = f["ranks"]
    env.buffers = f["buffers"]
    env.shm = f["shm"]
    if f["shape"] is not None:
        s = env.init("shape")
        s.labels, s.offset, s.sizes, s.strides = f["shape"]
    parts = env.init("parts", len(f["parts"]))
    for p, (rank, err, length, nb, last) in zip(parts, f["parts"]):
        p.rank, p.error, p.length, p.buffers, p.last = rank, err, length, nb, last

    def hops(lst: Any, spec: list[Any]) -> None:
        for h, (addr, seq, ranks, sub) in zip(lst, spec):
            h.addr, h.seq, h.ranks = addr, seq, ranks
            hops(h.init("forward", len(sub)), sub)

    hops(env.init("forward", len(f["forward"])), f["forward"])
    return env


def _dump(e: Any) -> tuple[Any, ...]:
    def hops(lst: Any) -> list[Any]:
        return [(h.addr, h.seq, list(h.ranks), hops(h.forward)) for h in lst]

    s = e.shape
    return (
        str(e.kind), e.origin, e.seq, e.actor, list(e.ranks), e.endpoint, e.port, e.replyAddr, e.replyPort,
        e.encoding, bytes(e.payload), list(e.buffers), hops(e.forward),
        (list(s.labels), s.offset, list(s.sizes), list(s.strides)),
        [(p.rank, p.error, p.length, p.buffers, p.last) for p in e.parts], e.sender, e.flags, list(e.shm),
    )


u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)
text = st.text(max_size=40)
hop = st.recursive(
    st.tuples(text, u64, st.lists(u32, max_size=5), st.just([])),
    lambda sub: st.tuples(text, u64, st.lists(u32, max_size=5), st.lists(sub, max_size=2)),
    max_leaves=6,
)
fields = st.fixed_dictionaries(
    {
        "kind": st.sampled_from(E.KINDS),
        "origin": text, "seq": u64, "actor": text, "endpoint": text, "port": u64, "replyAddr": text,
        "replyPort": u64, "encoding": st.integers(0, 255), "payload": st.binary(max_size=300), "sender": text,
        "flags": u32, "ranks": st.lists(u32, max_size=9), "buffers": st.lists(u64, max_size=4),
        "shm": st.lists(u64, max_size=4),
        "shape": st.one_of(st.none(), st.tuples(st.lists(text, max_size=3), u32, st.lists(u32, max_size=3), st.lists(u32, max_size=3))),
        "parts": st.lists(st.tuples(u32, st.booleans(), u32, u32, st.booleans()), max_size=4),
        "forward": st.lists(hop, max_size=3),
    }
)


@settings(max_examples=100, deadline=None)
@given(fields)
def test_our_bytes_read_the_same_in_pycapnp_and_theirs_in_ours(f: dict[str, Any]) -> None:
    ours = bytes(_fill(Envelope.new_message(), f).to_bytes())
    theirs = _fill(S.Envelope.new_message(), f).to_bytes()
    with S.Envelope.from_bytes(ours, traversal_limit_in_words=1 << 20) as m:
        want = _dump(m)
    assert _dump(decode_envelope(ours)) == want
    assert _dump(decode_envelope(ours)) == want  # second time through the prefix cache
    assert _dump(decode_envelope(theirs)) == want


def test_multi_segment_messages_take_the_pycapnp_path() -> None:
    m = S.Envelope.new_message()
    m.endpoint = "big"
    m.payload = b"x" * 300_000
    raw = m.to_bytes()
    assert int.from_bytes(raw[:4], "little") > 0
    env = decode_envelope(raw)
    assert env.endpoint == "big" and len(env.payload) == 300_000


def test_template_messages_decode_like_full_ones_and_prefixes_never_mix() -> None:
    base = Envelope()
    base.kind, base.origin, base.actor, base.endpoint, base.sender = "call", "unix:/a", "mesh-1", "ping", "client"
    base.ranks = [3]
    s = base.init("shape")
    s.labels, s.offset, s.sizes, s.strides = ["gpus"], 3, [1], [1]
    other = base.copy()
    other.actor = "mesh-2"  # same lengths, different bytes
    for i in range(3):
        for env, actor in ((base, "mesh-1"), (other, "mesh-2")):
            raw = bytes(EnvelopeTemplate(env).encode(i + 1, 7 + i, b"p" * i, [5] * i, [0] * i))
            got = decode_envelope(raw)
            assert (got.actor, got.seq, got.replyPort, got.payload, list(got.buffers)) == (actor, i + 1, 7 + i, b"p" * i, [5] * i)
            assert list(got.shape.sizes) == [1] and got.shape.offset == 3


def test_received_shapes_are_read_only() -> None:
    env = Envelope()
    env.init("shape").sizes = [2]
    got = decode_envelope(bytes(env.to_bytes()))
    with pytest.raises(AttributeError):
        got.shape.offset = 1


def test_pointer_cycles_hit_the_traversal_limit() -> None:
    env = Envelope()
    env.init("forward", 1)[0].addr = "a"
    raw = bytearray(env.to_bytes())
    # point the hop's forward list at the list holding it: an infinite tree
    fwd_at = E._WRITERS["forward"][0]
    lo, hi = E._W.unpack_from(raw, fwd_at)
    list_start = fwd_at + 8 + 8 * (lo >> 2)
    elem = list_start + 8
    ptr = elem + 8 * E.HOP_SIZE[0] + 16
    off = (list_start - (ptr + 8)) // 8
    E._W.pack_into(raw, ptr, ((off & ((1 << 30) - 1)) << 2) | 1, hi)
    with pytest.raises(ProtocolError):
        decode_envelope(bytes(raw))


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=0, max_size=300), st.integers(0, 400), st.binary(min_size=1, max_size=8))
def test_garbage_is_a_protocol_error_or_decodes(junk: bytes, pos: int, patch: bytes) -> None:
    env = _fill(Envelope(), {
        "kind": "call", "origin": "o", "seq": 1, "actor": "a", "endpoint": "e", "port": 0, "replyAddr": "r",
        "replyPort": 2, "encoding": 0, "payload": b"pp", "sender": "s", "flags": 0, "ranks": [1, 2], "buffers": [3],
        "shm": [], "shape": (["x"], 0, [2], [1]), "parts": [(0, False, 2, 0, True)], "forward": [("h", 1, [0], [])],
    })
    for raw in (junk, bytes(env.to_bytes())):
        data = bytearray(raw)
        if data:
            p = pos % len(data)
            data[p : p + len(patch)] = patch
        try:
            decode_envelope(bytes(data))
        except ProtocolError:
            pass


def test_shared_memory_segments_are_reused_after_the_receiver_drops_its_view() -> None:
    from monarch.actor import this_host

    from tests.runtime.actors import Counter

    np = pytest.importorskip("numpy")
    pm = this_host().spawn_procs(per_host={"procs": 1})
    try:
        echo = pm.spawn("echo_shm", Counter)
        from monarch._mesh.current import current_runtime as get_runtime

        rt = get_runtime()
        for i in range(6):
            arr = np.full(3 << 20, i, dtype=np.uint8)
            back = echo.echo.call_one(arr).get()
            assert back.shape == arr.shape and int(back[0]) == i and int(back[-1]) == i
            del back
            gc.collect()
        conn = next(c for a, c in rt.router._out.items() if a in set(echo._ref.addrs))
        pool = conn._shm_tx
        assert pool is not None
        deadline = time.monotonic() + 5
        while pool._busy and time.monotonic() < deadline:
            time.sleep(0.01)
        assert pool.segment_count() <= 2, "segments were not reused"
    finally:
        pm.stop().get(timeout=30)


def test_layout_derived_from_the_schema_text_matches_pycapnp() -> None:
    from monarch._transport.layout import load_envelope_layout

    structs, enums = load_envelope_layout()
    for name, lay in structs.items():
        node = getattr(S, name).schema.node
        assert (lay.data_words, lay.pointer_count) == (node.struct.dataWordCount, node.struct.pointerCount), name
        assert {f.name: f.slot.offset for f in node.struct.fields} == {n: f.offset for n, f in lay.fields.items()}, name
    assert enums["Kind"] == tuple(S.Kind.schema.enumerants)


def test_layout_algorithm_matches_pycapnp_on_random_structs(tmp_path: Any) -> None:
    import random

    import capnp
    from monarch._transport.layout import parse_layout

    rnd = random.Random(1234)
    types = ["Bool", "UInt8", "Int16", "UInt32", "Float32", "UInt64", "Text", "Data", "List(UInt32)", "Inner"]
    body = ["@0xb1e2c3d4e5f60718;", "struct Inner { x @0 :UInt8; }"]
    for i in range(40):
        fields = [f"  f{j} @{j} :{rnd.choice(types)};" for j in range(rnd.randint(1, 14))]
        body.append(f"struct S{i} {{\n" + "\n".join(fields) + "\n}")
    path = tmp_path / "rand.capnp"
    path.write_text("\n".join(body) + "\n")
    parser = capnp.SchemaParser()
    mod = parser.load(str(path))
    mine, _ = parse_layout(path.read_text(), str(path))
    for i in range(40):
        node = getattr(mod, f"S{i}").schema.node
        lay = mine[f"S{i}"]
        assert (lay.data_words, lay.pointer_count) == (node.struct.dataWordCount, node.struct.pointerCount)
        assert {f.name: f.slot.offset for f in node.struct.fields} == {n: f.offset for n, f in lay.fields.items()}


def test_layout_rejects_schema_features_the_codec_does_not_handle() -> None:
    from monarch._core.errors import SchemaError
    from monarch._transport.layout import parse_layout

    with pytest.raises(SchemaError, match="unsupported"):
        parse_layout("struct A {\n  u :union { a @0 :UInt8; b @1 :UInt16; }\n}")
    with pytest.raises(SchemaError, match="ordinals"):
        parse_layout("struct A { a @0 :UInt8; b @2 :UInt8; }")
    with pytest.raises(SchemaError, match="unsupported type"):
        parse_layout("struct A { a @0 :Mystery; }")


def test_transport_frames_round_trip_through_pycapnp() -> None:
    from monarch._transport.messages import Kind
    from monarch._transport.shm import segment_frame

    raw = segment_frame(Kind.SHM_SEGMENT, 7, 1 << 21)
    with S.Envelope.from_bytes(raw) as m:
        assert (str(m.kind), m.segment.id, m.segment.size) == ("shmSegment", 7, 1 << 21)
    b = S.Envelope.new_message(kind="shmRetire")
    b.init("segment").id = 9
    env = decode_envelope(b.to_bytes())
    assert env.kind == Kind.SHM_RETIRE and env.segment.id == 9 and env.segment.size == 0


@settings(max_examples=200, deadline=None)
@given(
    port=st.integers(1, 2**64 - 1),
    rank=st.integers(0, 2**32 - 1),
    error=st.booleans(),
    last=st.booleans(),
    end_of_stream=st.booleans(),
    payload=st.binary(max_size=40),
    lengths=st.lists(st.integers(0, 2**40), max_size=3),
    shared=st.booleans(),
)
def test_direct_reply_encoding_equals_the_general_encoder_and_decodes(
    port: int, rank: int, error: bool, last: bool, end_of_stream: bool, payload: bytes, lengths: list[int], shared: bool
) -> None:
    from monarch._transport.encoder import encode_reply
    from monarch._transport.messages import END_OF_STREAM_BIT

    flags = END_OF_STREAM_BIT if end_of_stream else 0
    shm = [i + 1 for i in range(len(lengths))] if shared and lengths else None
    env = Envelope.new_message()
    env.kind = "reply"
    env.port = port
    p = env.init("parts", 1)[0]
    p.rank, p.error, p.length, p.buffers, p.last = rank, error, len(payload), len(lengths), last
    if flags:
        env.flags = flags
    env.payload = payload
    if lengths:
        env.buffers = lengths
    env.shm = shm or ()
    direct = bytes(encode_reply(port, rank, error, last, flags, payload, lengths, shm))
    assert direct == bytes(env.to_bytes())
    got = decode_envelope(direct)
    assert (got.kind, got.port, got.flags, bytes(got.payload)) == ("reply", port, flags, payload)
    (part,) = got.parts
    assert (part.rank, part.error, part.length, part.buffers, part.last) == (rank, error, len(payload), len(lengths), last)
    assert list(got.buffers) == lengths
