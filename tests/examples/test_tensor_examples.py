"""SPMD (``monarch.tensor.spmd``) on a {"hosts": 2, "gpus": 2} mesh of real procs, and the
examples that use it: torchrun's variables per rank, a failing script named by its rank, and
Monarch's "DDP using SPMDActor" example training with gloo."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")

from monarch.actor import ActorError
from monarch.tensor.spmd import SPMDActor, run_spmd
from monarch.testing import proc_mesh

from tests.examples.test_examples import run_example


@pytest.fixture(scope="module")
def procs():
    with proc_mesh({"hosts": 2, "gpus": 2}, timeout_s=30.0) as p:
        yield p


def test_setup_env_sets_torchrun_variables_per_rank(procs) -> None:
    am = procs.spawn("spmd_env", SPMDActor)
    vm = am.setup_env.call("127.0.0.1", 29511).get(60)
    for pt, env in vm.items():
        h, g = pt["hosts"], pt["gpus"]
        assert env["RANK"] == str(h * 2 + g) and env["LOCAL_RANK"] == str(g)
        assert env["WORLD_SIZE"] == "4" and env["LOCAL_WORLD_SIZE"] == "2"
        assert env["GROUP_RANK"] == str(h) and env["GROUP_WORLD_SIZE"] == "2"
        assert (env["MASTER_ADDR"], env["MASTER_PORT"]) == ("127.0.0.1", "29511")


def test_run_spmd_reports_a_failing_rank(procs, tmp_path) -> None:
    script = tmp_path / "fail.py"
    script.write_text(
        "import os\nif os.environ['RANK'] == '2':\n    raise ValueError('bad rank two')\nprint('ok', os.environ['RANK'])\n"
    )
    with pytest.raises(ActorError, match="rank 2: ValueError: bad rank two"):
        run_spmd(procs, str(script), timeout_s=60)


def test_run_spmd_returns_each_ranks_output(procs, tmp_path) -> None:
    script = tmp_path / "hello.py"
    script.write_text("import os, sys\nprint('hi', os.environ['RANK'], sys.argv[1:])\n")
    out = run_spmd(procs, str(script), ["--x", "1"], timeout_s=60)
    assert out == {r: f"hi {r} ['--x', '1']\n" for r in range(4)}


@pytest.mark.timeout(200)
def test_ddp_spmd_example_keeps_replicas_identical_and_learns() -> None:
    out = run_example("ddp_spmd.py", timeout_s=180)
    lines = [x.split() for x in out.splitlines() if x.startswith("rank ")]
    assert sorted(int(x[1]) for x in lines) == [0, 1, 2, 3], out
    assert [int(x[3]) for x in sorted(lines, key=lambda x: int(x[1]))] == [0, 1, 0, 1]
    assert len({x[7] for x in lines}) == 1, out  # DDP: identical weights on every rank
    assert all(float(x[5]) < 0.01 for x in lines), out
    assert abs(float(lines[0][7]) - 3.5) < 0.05, out  # the target weights sum to 3.5


@pytest.mark.timeout(200)
def test_tensor_seed_example_checks_its_results_and_succeeds() -> None:
    out = run_example("tensor_seed.py", timeout_s=180)
    assert "tensor seed example: ok" in out, out


@pytest.mark.slow
@pytest.mark.timeout(250)
def test_digits_ddp_mode_reaches_95_percent() -> None:
    out = run_example("digits_ddp.py", timeout_s=220)
    line = next(x for x in out.splitlines() if x.startswith("held-out accuracy:"))
    assert float(line.split()[2].rstrip("%")) >= 95.0, out
