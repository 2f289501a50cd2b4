"""Generator and IDL-path benchmarks (not tests). Run: ``python -m benchmarks.generator_bench``
from the repository root (spawned procs import ``benchmarks._idl_actors``).

Issue 11's "Speed" section, all measured in one run, each measurement repeated in several
rounds (the machine is small and shared: read medians and the spread across rounds):

1. ``monarch-gen`` on a schema of 200 actor interfaces (target: under 2 s).
2. ``call_one`` round trips on real procs through generated stubs against the plain (pickle)
   API, in the same proc: a small struct, and a struct with a 16 MiB tensor field, echoed
   (target: the IDL path at most 1.15x the plain one). The two paths alternate within each
   round and their order flips every round; the ratio is taken per round.
3. Encode + decode of a small struct (and of a 16 MiB tensor field) through the generated
   classes, against raw pycapnp and pickle.

Options: ``--rounds N`` (default 5), ``--quick`` (3 rounds, fewer calls), ``--only
gen,calls,codec``. ``--only huge [--structs N]``: one generation of a schema of N structs
(default 76k, ~10 MB: issue 11 §3), its time and peak memory.
"""

from __future__ import annotations

import argparse
import os
import pickle
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from monarch.generated import example as ex
from monarch.generator.generate import generate
from rich.console import Console
from rich.markup import escape
from rich.table import Table

GEN_TARGET_S = 2.0
IDL_TARGET_RATIO = 1.15


def _median_us(fn: Callable[[], Any], repeat: int, number: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        times.append((time.perf_counter() - t0) / number)
    return statistics.median(times) * 1e6


def _spread(values: Sequence[float], fmt: str = ".1f") -> str:
    """``median [min-max]`` of per-round values."""
    return f"{statistics.median(values):{fmt}} [{min(values):{fmt}}-{max(values):{fmt}}]"


# -- 1. generation --------------------------------------------------------------------------
def _big_schema(n: int) -> str:
    parts = [
        '@0xa5a5a5a5a5a5a5a5;\nusing M = import "/monarch/actor.capnp";\n',
        "struct Arg { x @0 :Int64; name @1 :Text; items @2 :List(Float64); }\n",
    ]
    for i in range(n):
        parts.append(
            f"interface Actor{i} $M.actor {{\n"
            f"  step @0 (arg :Arg, n :UInt32) -> (loss :Float64);\n"
            f"  stats @1 () -> (mean :Float64, count :UInt64);\n"
            f"  ticks @2 (n :UInt32) -> (i :UInt32) $M.stream;\n}}\n"
        )
    return "".join(parts)


def bench_generation(n: int = 200) -> float:
    """Seconds for one ``generate`` of an ``n``-interface schema (load, IR, render, validate)."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "big.capnp"
        path.write_text(_big_schema(n))
        old = os.getcwd()
        os.chdir(d)
        try:
            t0 = time.perf_counter()
            out = generate(["big.capnp"], [])
            elapsed = time.perf_counter() - t0
        finally:
            os.chdir(old)
    assert any(o.name == "big.py" for o in out)
    return elapsed


def huge_schema(n: int) -> str:
    """A schema of ``n`` structs, ~10 MB at 76k (issue 11's 10 MB schema): each has a comment,
    primitive, Text, enum, list and struct-typed fields (the previous struct), as a big real
    schema has."""
    parts = [
        "@0xa5a5a5a5a5a5a5a6;\nenum Kind { small @0; large @1; }\n",
        "struct S0 { id @0 :UInt64; }\n",
    ]
    for i in range(1, n):
        parts.append(
            f"struct S{i} {{\n  # Record {i}.\n  id @0 :UInt64; name @1 :Text; "
            f"value @2 :Float64; kind @3 :Kind;\n  prev @4 :S{i - 1}; tags @5 :List(Text);\n}}\n"
        )
    return "".join(parts)


def bench_huge(n: int) -> tuple[float, float, int]:
    """``(seconds, peak RSS in MiB of this process and of the parser child, schema bytes)`` of
    one ``generate`` of :func:`huge_schema`; run it in a fresh process for a clean peak."""
    import resource

    text = huge_schema(n)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "huge.capnp"
        path.write_text(text)
        old = os.getcwd()
        os.chdir(d)
        try:
            t0 = time.perf_counter()
            out = generate(["huge.capnp"], [])
            elapsed = time.perf_counter() - t0
        finally:
            os.chdir(old)
    assert any(o.name == "huge.py" for o in out)
    peak_kib = max(
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
    )
    return elapsed, peak_kib / 1024, len(text.encode())


# -- 2. call_one round trips on real procs ----------------------------------------------------
def _round_trip_us(call: Callable[[], Any], n: int) -> float:
    """Median microseconds of ``n`` sequential round trips."""
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


def bench_calls(rounds: int, quick: bool) -> tuple[Table, dict[str, list[float]]]:
    from monarch.actor import this_host

    from benchmarks._idl_actors import Frame, IdlEcho, PlainEcho, PlainFrame, PlainPoint, Point

    small_n, tensor_n = (500, 10) if quick else (2000, 30)
    tensor = torch.randn(4 * 1024 * 1024)  # float32: 16 MiB
    point = Point(x=1.5, y=-2.25, step=7, label="loss")
    plain_point = PlainPoint(x=1.5, y=-2.25, step=7, label="loss")
    frame = Frame(step=3, data=tensor)
    plain_frame = PlainFrame(step=3, data=tensor)
    procs = this_host().spawn_procs(per_host={"gpus": 1})
    try:
        idl = procs.spawn("idl", IdlEcho)
        plain = procs.spawn("plain", PlainEcho)

        def idl_small() -> Any:
            return idl.point.call_one(point).get(timeout=60)

        def plain_small() -> Any:
            return plain.point.call_one(plain_point).get(timeout=60)

        def idl_tensor() -> Any:
            got = idl.frame.call_one(frame).get(timeout=60)
            return got.data.numel()  # a view of the received buffer: read, not copied

        def plain_tensor() -> Any:
            return plain.frame.call_one(plain_frame).get(timeout=60).data.numel()

        # both paths answer correctly before anything is timed
        got = idl_small()
        assert (got.x, got.y, got.step, got.label) == (1.5, -2.25, 7, "loss"), got
        assert plain_small() == plain_point
        assert idl_tensor() == plain_tensor() == tensor.numel()
        assert torch.equal(idl.frame.call_one(frame).get(timeout=60).data, tensor)
        for fn in (idl_small, plain_small):
            _round_trip_us(fn, small_n // 5)  # warm up: first-call caches, the link
        for fn in (idl_tensor, plain_tensor):
            _round_trip_us(fn, 3)
        cases = {
            "small struct": (idl_small, plain_small, small_n),
            "16 MiB tensor field": (idl_tensor, plain_tensor, tensor_n),
        }
        per_round: dict[str, list[float]] = {}
        for r in range(rounds):
            for name, (i_fn, p_fn, n) in cases.items():
                order = [("idl", i_fn), ("plain", p_fn)]
                if r % 2:
                    order.reverse()
                for path, fn in order:
                    per_round.setdefault(f"{name}/{path}", []).append(_round_trip_us(fn, n))
    finally:
        procs.stop().get(timeout=60)
    table = Table(
        title=escape(
            f"call_one round trip on real procs, {rounds} rounds: median [min-max] of the "
            f"per-round medians; ratio per round (target <= {IDL_TARGET_RATIO}x)"
        )
    )
    for col in ("case", "IDL stubs (us)", "plain API (us)", "IDL/plain (x)", "target"):
        table.add_column(col, justify="right")
    for name in cases:
        i_v, p_v = per_round[f"{name}/idl"], per_round[f"{name}/plain"]
        ratios = [a / b for a, b in zip(i_v, p_v, strict=True)]
        per_round[f"{name}/ratio"] = ratios
        met = "met" if statistics.median(ratios) <= IDL_TARGET_RATIO else "NOT met"
        table.add_row(
            name, escape(_spread(i_v)), escape(_spread(p_v)), escape(_spread(ratios, ".2f")), met
        )
    return table, per_round


# -- 3. codecs ----------------------------------------------------------------------------------
def bench_codecs(rounds: int) -> Table:
    table = Table(
        title=escape(
            f"encode + decode, {rounds} rounds: median [min-max] of per-round medians "
            "(us per message); ratios of medians"
        )
    )
    for col in ("case", "generated", "raw pycapnp", "pickle", "generated/raw", "generated/pickle"):
        table.add_column(col, justify="right")
    raw_mod = ex._SCHEMA.struct_module(ex.Metric.__capnp__.node_id)
    metric = ex.Metric(name="loss", scalar=0.5)

    def gen_small() -> Any:
        payload, bufs = metric._encode()
        v = ex.Metric._decode(payload, bufs)
        return v.name, v.scalar

    def raw_small() -> Any:
        b = raw_mod.new_message()
        b.name = "loss"
        b.scalar = 0.5
        data = b.to_bytes()
        with raw_mod.from_bytes(data) as r:
            return r.name, r.scalar

    small = {"name": "loss", "scalar": 0.5}

    def pickle_small() -> Any:
        v = pickle.loads(pickle.dumps(small, protocol=5))
        return v["name"], v["scalar"]

    rows = [("small struct", gen_small, raw_small, pickle_small, 5, 2000)]
    tensor = torch.randn(4 * 1024 * 1024)  # 16 MiB
    codec = ex._WORKER_TRAIN.codec
    assert codec is not None
    batch = ex.Batch(step=1, inputs=tensor)
    raw_batch = ex._SCHEMA.struct_module(ex.Batch.__capnp__.node_id)

    def gen_tensor() -> Any:
        payload, bufs = codec.encode_call((batch,), {})
        # the transport delivers received buffers as views; no copy is made here
        (got,), _ = codec.decode_call(memoryview(payload), [memoryview(b).cast("B") for b in bufs])
        return got.inputs.sum

    def raw_tensor() -> Any:
        b = raw_batch.new_message()
        t = b.init("inputs")
        t.dtype = "float32"
        t.shape = [tensor.numel()]
        t.data = tensor.numpy().tobytes()
        data = b.to_bytes()
        with raw_batch.from_bytes(data, traversal_limit_in_words=len(data)) as r:
            return torch.frombuffer(bytearray(r.inputs.data), dtype=torch.float32)

    def pickle_tensor() -> Any:
        return pickle.loads(pickle.dumps(tensor, protocol=5))

    rows.append(("16 MiB tensor field", gen_tensor, raw_tensor, pickle_tensor, 3, 3))
    for name, g, r, p, repeat, number in rows:
        values: dict[str, list[float]] = {"g": [], "r": [], "p": []}
        for _ in range(rounds):
            for key, fn in (("g", g), ("r", r), ("p", p)):
                values[key].append(_median_us(fn, repeat, number))
        tg, tr, tp = (statistics.median(values[k]) for k in "grp")
        table.add_row(
            name,
            escape(_spread(values["g"])),
            escape(_spread(values["r"])),
            escape(_spread(values["p"])),
            f"{tg / tr:.2f}x",
            f"{tg / tp:.2f}x",
        )
    return table


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=0, help="rounds (default 5, --quick 3)")
    parser.add_argument("--quick", action="store_true", help="3 rounds, fewer calls")
    parser.add_argument(
        "--only", default="gen,calls,codec", help="comma-separated sections (also: huge)"
    )
    parser.add_argument(
        "--structs", type=int, default=76_000, help="structs of the 'huge' schema (default 76k)"
    )
    args = parser.parse_args(argv)
    rounds = args.rounds or (3 if args.quick else 5)
    only = set(args.only.split(","))
    console = Console(width=130)
    if "gen" in only:
        gen = [bench_generation() for _ in range(rounds)]
        verdict = "met" if statistics.median(gen) < GEN_TARGET_S else "NOT met"
        console.print(
            f"monarch-gen, 200 actor interfaces, {rounds} runs: {_spread(gen, '.2f')} s "
            f"(target < {GEN_TARGET_S} s: {verdict})"
        )
    if "huge" in only:
        seconds, peak_mib, size = bench_huge(args.structs)
        console.print(
            f"monarch-gen, {args.structs} structs ({size / 1e6:.1f} MB schema): {seconds:.1f} s, "
            f"peak RSS {peak_mib:.0f} MiB (the larger of this process and the parser child)"
        )
    if "calls" in only:
        table, _ = bench_calls(rounds, args.quick)
        console.print(table)
    if "codec" in only:
        console.print(bench_codecs(rounds))


if __name__ == "__main__":
    main()
