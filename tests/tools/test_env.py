"""``procs.env`` (get / list / set) and ``monarch env`` on a real 4-proc mesh."""

from __future__ import annotations

import json
import os
import re
from typing import Any

import pytest
from monarch.actor import Actor, endpoint, this_host

from tests.tools.conftest import RunningMesh


class EnvReader(Actor):
    @endpoint
    def read(self, name: str) -> str | None:
        return os.environ.get(name)


def test_get_returns_a_future_of_a_value_mesh_shaped_like_the_procs(
    running_mesh: RunningMesh,
) -> None:
    from monarch._core.value_mesh import ValueMesh

    fut = running_mesh.procs.env.get("MONARCH_RUNTIME_DIR")
    vm = fut.get(30.0)
    assert isinstance(vm, ValueMesh)
    assert len(list(vm.values())) == 4
    assert set(vm.values()) == {os.environ.get("MONARCH_RUNTIME_DIR") or vm.item(gpus=0)}
    assert (
        running_mesh.procs.env.get("SURELY_NOT_SET_ANYWHERE_12345").get(30.0).values() == [None] * 4
    )


def test_set_affects_later_code_in_the_procs_and_list_filters_by_prefix(
    running_mesh: RunningMesh,
) -> None:
    env = running_mesh.procs.env
    env.set(NCCL_TEST_A="1", NCCL_TEST_B="x y").get(30.0)
    readers = running_mesh.procs.spawn("env_readers", EnvReader)
    assert readers.read.call("NCCL_TEST_B").get(30.0).values() == ["x y"] * 4
    listed = env.list(prefix="NCCL_TEST_").get(30.0)
    assert list(listed.values()) == [{"NCCL_TEST_A": "1", "NCCL_TEST_B": "x y"}] * 4
    env.set(NCCL_TEST_A=None).get(30.0)
    assert env.get("NCCL_TEST_A").get(30.0).values() == [None] * 4


def test_a_slice_reads_only_its_procs(running_mesh: RunningMesh) -> None:
    part = running_mesh.procs.slice(gpus=slice(1, 3))
    part.env.set(ONLY_SOME="yes").get(30.0)
    assert running_mesh.procs.env.get("ONLY_SOME").get(30.0).values() == [None, "yes", "yes", None]
    assert part.env.get("ONLY_SOME").get(30.0).values() == ["yes", "yes"]


@pytest.mark.parametrize(
    "call, exc",
    [
        (lambda e: e.get(3), TypeError),
        (lambda e: e.get(""), ValueError),
        (lambda e: e.get("A=B"), ValueError),
        (lambda e: e.list(prefix=1), TypeError),
        (lambda e: e.set(), ValueError),
        (lambda e: e.set(X=1), TypeError),
    ],
)
def test_bad_input_raises_before_anything_is_sent(
    running_mesh: RunningMesh, call: Any, exc: type
) -> None:
    with pytest.raises(exc):
        call(running_mesh.procs.env)


def test_get_on_a_mesh_with_a_dead_proc_fails(failures: Any) -> None:
    import signal

    procs = this_host().spawn_procs(per_host={"gpus": 2})
    try:
        procs.initialized.get(60.0)
        assert procs.env.get("PATH").get(30.0).values()[0]
        from monarch._mesh import current

        rt = current.installed()
        pid = rt.procs.children[procs._addrs[1]].pid
        os.kill(pid, signal.SIGKILL)
        assert rt.procs.children[procs._addrs[1]].exited.wait(20.0)
        with pytest.raises(Exception, match=r"(?i)fail|lost|dead|kill"):
            procs.env.get("PATH").get(30.0)
    finally:
        procs.stop().get(30.0)


def test_monarch_env_shows_a_table_per_rank_and_highlights_differences(
    running_mesh: RunningMesh,
) -> None:
    running_mesh.procs.env.set(NCCL_SAME="s").get(30.0)
    running_mesh.procs.slice(gpus=2).env.set(NCCL_DIFF="two").get(30.0)
    r = running_mesh.monarch("env", "--json", "--prefix", "NCCL_")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert [x["rank"] for x in rows] == [0, 1, 2, 3]
    assert [x["env"].get("NCCL_DIFF") for x in rows] == [None, None, "two", None]
    assert all(x["env"]["NCCL_SAME"] == "s" for x in rows)
    r = running_mesh.monarch("env", "--prefix", "NCCL_", env={"FORCE_COLOR": "1", "COLUMNS": "200"})
    assert r.returncode == 0, r.stderr
    assert "NCCL_SAME" in r.stdout and "rank 3" in r.stdout
    assert "\x1b[1;33mtwo" in r.stdout  # the differing value, bold yellow
    assert re.search(r"\x1b\[[0-9;]*33mNCCL_DIFF", r.stdout)  # its name, yellow
    assert not re.search(r"\x1b\[[0-9;]*33mNCCL_SAME", r.stdout)
