"""Frame encoding/decoding: chunking, bounds, malformed input."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from monarch._core.errors import ProtocolError
from monarch._transport.frame import Envelope, FrameDecoder, encode_frame


def _frame(endpoint: str, bufs: list[bytes]) -> bytes:
    env = Envelope.new_message()
    env.kind = "call"
    env.endpoint = endpoint
    env.payload = b"p" * 5
    lst = env.init("buffers", len(bufs))
    for i, b in enumerate(bufs):
        lst[i] = len(b)
    return b"".join(bytes(memoryview(x).cast("B")) for x in encode_frame(env, bufs))


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.text(max_size=20), st.lists(st.binary(max_size=3000), max_size=3)), min_size=1, max_size=5),
    st.integers(min_value=0, max_value=2**32),
)
def test_frames_survive_any_chunking(frames: list[tuple[str, list[bytes]]], seed: int) -> None:
    data = b"".join(_frame(e, b) for e, b in frames)
    rnd = random.Random(seed)
    dec = FrameDecoder(1 << 20, 1 << 30)
    out: list[tuple[Any, list[memoryview]]] = []
    i = 0
    while i < len(data):
        n = rnd.randint(1, 700)
        dec.feed(data[i : i + n], out)
        i += n
    assert [(e.endpoint, [bytes(b) for b in bufs]) for e, bufs in out] == [(e, b) for e, b in frames]


def test_oversized_envelope_is_a_protocol_error() -> None:
    data = _frame("x" * 5000, [])
    with pytest.raises(ProtocolError, match="exceeds the limit"):
        FrameDecoder(1024, 1 << 20).feed(data, [])


def test_oversized_buffers_are_a_protocol_error() -> None:
    data = _frame("x", [b"a" * 4096])
    with pytest.raises(ProtocolError, match="exceeds the limit"):
        FrameDecoder(1 << 20, 1000).feed(data, [])


def test_the_frame_limit_counts_the_envelope_and_the_buffers() -> None:
    data = _frame("x" * 600, [b"a" * 4096])
    FrameDecoder(1 << 20, len(data)).feed(data, [])  # exactly at the limit: accepted
    with pytest.raises(ProtocolError, match="exceeds the limit"):
        FrameDecoder(1 << 20, 4096 + 64).feed(data, [])  # the buffers alone fit; the frame does not


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=0, max_size=400))
def test_random_bytes_never_crash_the_decoder(junk: bytes) -> None:
    dec = FrameDecoder(1 << 16, 1 << 20)
    try:
        dec.feed(junk, [])
    except ProtocolError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=200), st.binary(min_size=1, max_size=8))
def test_mutated_frames_never_crash_the_decoder(pos: int, patch: bytes) -> None:
    data = bytearray(_frame("endpoint", [b"abc" * 10]))
    pos = pos % len(data)
    data[pos : pos + len(patch)] = patch
    dec = FrameDecoder(1 << 16, 1 << 20)
    out: list[Any] = []
    try:
        dec.feed(bytes(data), out)
        for env, _ in out:
            _ = (env.endpoint, env.kind, list(env.ranks))
    except (ProtocolError, UnicodeDecodeError):
        pass
    except Exception as exc:  # capnp reports bad pointers as KjException
        assert "capnp" in type(exc).__module__ or "Kj" in type(exc).__name__, exc
