"""``$M.rref`` endpoints of the IDL (issue 13 §1): the generator gives their mesh proxies a typed
``rref()`` (``stubs.remote_rref``) that mypy --strict accepts and checks, other endpoints have
none, a ``$M.rref`` method without exactly one tensor result is a generation error, and at run
time ``rref()`` returns a handle whose fetch is each rank's result (golden case ``tensor_rref``,
actors in ``rref_actors.py``)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

import monarch  # noqa: E402
from monarch.tensor import TensorOpError  # noqa: E402
from monarch.testing import proc_mesh  # noqa: E402
from shadow import ROOT, make_shadow  # noqa: E402

from tests.generator.rref_actors import RankSharder  # noqa: E402

HERE = Path(__file__).parent
WAIT_S = 60.0
_EXPECT = re.compile(r"#\s*E:\s*(.+?)\s*$")
_REPORTED = re.compile(r"^(?P<file>[^:]+):(?P<line>\d+): error: (?P<msg>.+)$")
SCHEMA = (
    "@0xd1e2f3a4b5c6d7e9;\n"
    'using M = import "/monarch/actor.capnp";\n'
    "interface Foo $M.actor {\n  f @0 () -> (x :Int32) $M.rref;\n}\n"
)


def test_rref_without_one_tensor_result_is_a_generation_error(tmp_path: Path) -> None:
    (tmp_path / "bad.capnp").write_text(SCHEMA)
    res = subprocess.run(
        [sys.executable, "-m", "monarch.generator.cli", "bad.capnp", "-o", "out"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert res.returncode == 1
    assert res.stderr.startswith("bad.capnp:4:3: $rref needs exactly one result, an M.Tensor"), (
        res.stderr
    )
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_mypy_accepts_typed_rref_uses_and_rejects_misuse_exactly(
    case_package: Path, tmp_path: Path
) -> None:
    if (
        shutil.which("mypy") is None
        and subprocess.run([sys.executable, "-m", "mypy", "--version"], check=False).returncode
    ):
        pytest.skip("mypy is not installed")
    shadow = make_shadow(tmp_path / "shadow")
    files = [
        str(case_package / "tensor_rref.py"),
        str(HERE / "typed_rref_user.py"),
        str(HERE / "typed_rref_misuse.py"),
    ]
    res = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"),
         "--cache-dir", str(ROOT / ".mypy_cache"), "--no-error-summary", "--show-error-codes", *files],
        env={"MYPYPATH": str(shadow), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
        timeout=540,
    )  # fmt: skip
    reported = set()
    for line in res.stdout.splitlines():
        m = _REPORTED.match(line)
        if m:
            reported.add((Path(m["file"]).name, int(m["line"]), m["msg"]))
    expected = set()
    for n, text in enumerate((HERE / "typed_rref_misuse.py").read_text().splitlines(), 1):
        m = _EXPECT.search(text)
        if m:
            expected.add(("typed_rref_misuse.py", n, m[1]))
    assert len(expected) == 5
    assert reported == expected, res.stdout + res.stderr


@pytest.fixture(scope="module")
def mesh() -> Iterator[tuple[object, object]]:
    with proc_mesh({"gpus": 2}, timeout_s=30.0) as procs:
        yield procs, procs.spawn("sharders", RankSharder)


def test_rref_returns_a_handle_whose_fetch_is_each_ranks_result(mesh) -> None:
    procs, sharders = mesh
    before = list(sharders.count.call().get(WAIT_S).values())
    with procs.activate():
        t = sharders.shard.rref(5, 0.5)
        u = t * 2 + 1  # ops after the rref see its result
        s = t.reduce("gpus", "sum")
        again = sharders.shard.rref(5, 0.5)  # the shape is known now: no wait
    assert isinstance(t, monarch.Tensor) and t.shape == (5,) and t.dtype == torch.float32
    for g in range(2):
        want = torch.arange(5, dtype=torch.float32) * 0.5 * (g + 1)
        vt, vu, va = monarch.fetch_shard((t, u, again), gpus=g).get(WAIT_S)
        assert torch.equal(vt, want) and torch.equal(vu, want * 2 + 1) and torch.equal(va, want)
    assert torch.equal(
        monarch.fetch_shard(s, gpus=1).get(WAIT_S), torch.arange(5, dtype=torch.float32) * 1.5
    )
    # the other adverbs still go through the schema's structs; the actor ran both rrefs
    assert [c - b for c, b in zip(sharders.count.call().get(WAIT_S).values(), before)] == [2, 2]


def test_rref_calls_run_in_op_order_on_the_actors_state(mesh) -> None:
    procs, sharders = mesh
    with procs.activate():
        a = sharders.ones.rref(2)
        b = sharders.ones.rref(2)
        c = sharders.ones.rref(3)  # new arguments: a new shape, learnt on this call
    for g in range(2):
        va, vb, vc = monarch.fetch_shard((a, b, c), gpus=g).get(WAIT_S)
        assert vb.dtype == torch.float64 and c.shape == (3,) and vc.shape == (3,)
        assert float(vb[0]) == float(va[0]) + 1 and float(vc[0]) == float(va[0]) + 2


def test_rref_misuse_and_failures_raise(mesh) -> None:
    procs, sharders = mesh
    with pytest.raises(ValueError, match="active mesh"):
        sharders.shard.rref(2, 1.0)
    with procs.activate():
        with pytest.raises(TypeError, match=r"does not mark this endpoint \$M\.rref"):
            sharders.count.rref()
        with pytest.raises(TypeError):
            sharders.shard.rref(2)  # missing argument: raised before anything is sent
        # failing on every rank on its first call (its shape is unknown): rank 0's error
        with pytest.raises(TensorOpError, match="n must be positive") as info:
            sharders.ones.rref(0)
        assert info.value.rank == {"gpus": 0}
        ok = sharders.shard.rref(2, 1.0)  # the mesh keeps working
    assert torch.equal(monarch.fetch_shard(ok, gpus=1).get(WAIT_S), torch.tensor([0.0, 2.0]))
