"""Generator and generated-code benchmarks (not tests). Run: ``python benchmarks/generator_bench.py``.

1. ``monarch-gen`` on a schema of 200 actor interfaces (target: under 5 s).
2. Encode + decode of a small struct through the generated classes, raw pycapnp and pickle.
3. The same with a 16 MiB tensor field (out of band through the generated codec).
Prints medians and ratios to the generated classes, all measured in the same run.
"""

from __future__ import annotations

import os
import pickle
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from monarch.generated import example as ex
from monarch.generator.generate import generate
from rich.console import Console
from rich.table import Table


def _median_us(fn: Callable[[], Any], repeat: int, number: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        times.append((time.perf_counter() - t0) / number)
    return statistics.median(times) * 1e6


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


def bench_codecs(console: Console) -> Table:
    table = Table(title="encode + decode, median per message (same run)")
    for col in (
        "case",
        "generated (us)",
        "raw pycapnp (us)",
        "pickle (us)",
        "raw/generated",
        "pickle/generated",
    ):
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

    rows = [("small struct", gen_small, raw_small, pickle_small, 7, 2000)]
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

    rows.append(("16 MiB tensor field", gen_tensor, raw_tensor, pickle_tensor, 7, 5))
    for name, g, r, p, repeat, number in rows:
        tg, tr, tp = (_median_us(f, repeat, number) for f in (g, r, p))
        table.add_row(
            name, f"{tg:.1f}", f"{tr:.1f}", f"{tp:.1f}", f"{tr / tg:.2f}", f"{tp / tg:.2f}"
        )
    return table


def main() -> None:
    console = Console()
    gen_s = bench_generation()
    console.print(f"monarch-gen, 200 actor interfaces: {gen_s:.2f} s (target < 5 s)")
    console.print(bench_codecs(console))


if __name__ == "__main__":
    main()
