"""monarch.tools.code_sync on real procs: changed-only transfer, deletions, modes, hot reload of
live actors, watch, bad input. One 4-proc mesh for the module, stopped even when a test fails."""

from __future__ import annotations

import os
import stat
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from monarch.actor import this_host
from monarch.tools.config.workspace import Workspace

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def procs() -> Iterator[object]:
    pm = this_host().spawn_procs(per_host={"gpus": 4})
    try:
        pm.initialized.get(60)
        yield pm
    finally:
        pm.stop().get(30)


def _project(tmp_path: Path, files: dict[str, str]) -> tuple[Path, str]:
    """A project directory with a unique name (procs keep modules between tests)."""
    name = f"proj_{uuid.uuid4().hex[:8]}"
    d = tmp_path / name
    for rel, text in files.items():
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / rel).write_text(text)
    return d, name


def _root(res: object) -> Path:
    roots = set(res.roots.values())  # type: ignore[attr-defined]
    assert len(roots) == 1, roots
    return Path(roots.pop())


def test_only_changed_files_travel_and_one_copy_per_host(procs, tmp_path: Path) -> None:
    d, name = _project(tmp_path, {f"pkg/m{i}.py": f"X = {i}\n" for i in range(20)})
    ws = Workspace(dirs=[d])
    first = procs.sync_workspace(ws).get(60)
    assert first.files_sent == 20  # 4 procs on one host share one copy
    assert len(first.reloaded) == 4
    root = _root(first)
    assert (root / name / "pkg" / "m3.py").read_text() == "X = 3\n"
    (d / "pkg" / "m3.py").write_text("X = 33\n")
    again = procs.sync_workspace(ws).get(60)
    assert (again.files_sent, again.files_deleted) == (1, 0)
    assert (root / name / "pkg" / "m3.py").read_text() == "X = 33\n"
    assert procs.sync_workspace(ws).get(60).files_sent == 0


def test_deletion_propagates(procs, tmp_path: Path) -> None:
    d, name = _project(tmp_path, {"a.py": "A = 1\n", "sub/b.txt": "b\n"})
    ws = Workspace(dirs=[d])
    root = _root(procs.sync_workspace(ws).get(60))
    assert (root / name / "sub" / "b.txt").exists()
    (d / "sub" / "b.txt").unlink()
    res = procs.sync_workspace(ws).get(60)
    assert (res.files_sent, res.files_deleted) == (0, 1)
    assert not (root / name / "sub" / "b.txt").exists()
    assert (root / name / "a.py").exists()


def test_file_modes_are_kept_and_a_mode_change_alone_sends_no_content(
    procs, tmp_path: Path
) -> None:
    d, _name = _project(tmp_path, {"run.sh": "#!/bin/sh\necho hi\n", "data.txt": "x\n"})
    os.chmod(d / "run.sh", 0o750)
    os.chmod(d / "data.txt", 0o600)
    ws = Workspace(dirs={d: "renamed"})
    root = _root(procs.sync_workspace(ws).get(60))
    assert stat.S_IMODE(os.stat(root / "renamed" / "run.sh").st_mode) == 0o750
    assert stat.S_IMODE(os.stat(root / "renamed" / "data.txt").st_mode) == 0o600
    os.chmod(d / "data.txt", 0o644)
    res = procs.sync_workspace(ws).get(60)
    assert (res.files_sent, res.modes_changed) == (0, 1)
    assert stat.S_IMODE(os.stat(root / "renamed" / "data.txt").st_mode) == 0o644


def _actor_module(value: int, dep: str) -> str:
    return (
        "from monarch.actor import Actor, endpoint\n"
        f"from {dep} import base\n\n"
        f"def value():\n    return base() + {value}\n\n"
        "class Answer(Actor):\n"
        "    @endpoint\n"
        "    def get(self) -> int:\n"
        "        return value()\n"
    )


@pytest.fixture
def hot_project(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    d, name = _project(tmp_path, {})
    mod, dep = f"hot_{name}", f"dep_{name}"
    d.mkdir()
    (d / f"{dep}.py").write_text("def base():\n    return 100\n")
    (d / f"{mod}.py").write_text(_actor_module(1, dep))
    sys.path.insert(0, str(d))
    try:
        yield d, mod
    finally:
        sys.path.remove(str(d))
        sys.modules.pop(mod, None)
        sys.modules.pop(dep, None)


def test_auto_reload_makes_a_live_actor_run_the_new_code(procs, hot_project) -> None:
    d, mod = hot_project
    ws = Workspace(dirs=[d])
    procs.sync_workspace(ws).get(60)  # the procs import the module from the synced copy
    module = __import__(mod)
    answers = procs.spawn("answers", module.Answer)
    assert list(answers.get.call().get(30).values()) == [101] * 4
    (d / f"{mod}.py").write_text(
        _actor_module(2, "dep" + mod[3:])
    )  # same size, within the same second
    (d / f"dep{mod[3:]}.py").write_text("def base():\n    return 200\n")
    res = procs.sync_workspace(ws, auto_reload=True).get(60)
    assert res.files_sent == 2
    assert len(res.reloaded) == 4
    for mods in res.reloaded.values():
        assert mods == ["dep" + mod[3:], mod]  # dependencies first
    assert list(answers.get.call().get(30).values()) == [202] * 4
    without = procs.sync_workspace(ws, auto_reload=False).get(60)
    assert all(m == [] for m in without.reloaded.values())


def test_watch_syncs_and_reloads_on_save(procs, hot_project) -> None:
    d, mod = hot_project
    watch = procs.sync_workspace(Workspace(dirs=[d]), auto_reload=True, watch=True).get(60)
    try:
        module = __import__(mod)
        answers = procs.spawn("watched", module.Answer)
        assert list(answers.get.call().get(30).values()) == [101] * 4
        (d / f"{mod}.py").write_text(_actor_module(7, "dep" + mod[3:]))
        res = watch.wait_for_sync(1, timeout_s=30)
        assert res.files_sent == 1
        assert all(mod in m for m in res.reloaded.values())
        assert list(answers.get.call().get(30).values()) == [107] * 4
    finally:
        watch.stop()
    assert not watch.running


def test_large_file_travels_in_chunks(procs, tmp_path: Path) -> None:
    d, name = _project(tmp_path, {})
    d.mkdir()
    blob = os.urandom(9 << 20)  # three chunks of at most 4 MiB
    (d / "weights.bin").write_bytes(blob)
    res = procs.sync_workspace(Workspace(dirs=[d])).get(60)
    assert (res.files_sent, res.bytes_sent) == (1, len(blob))
    assert (_root(res) / name / "weights.bin").read_bytes() == blob


def test_bad_input_names_the_problem(procs, tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="Workspace"):
        procs.sync_workspace([str(tmp_path)])
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match="nope"):
        procs.sync_workspace(Workspace(dirs=[missing])).get(30)
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(NotADirectoryError, match=r"file\.txt"):
        procs.sync_workspace(Workspace(dirs=[f])).get(30)
    d, _ = _project(tmp_path, {"ok.py": "\n"})
    os.mkfifo(d / "pipe")
    with pytest.raises(ValueError, match="pipe"):
        procs.sync_workspace(Workspace(dirs=[d])).get(30)
    with pytest.raises(TypeError, match="list or dict"):
        Workspace(dirs="abc")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"\.\."):
        Workspace(dirs={d: "../escape"})
    with pytest.raises(NotImplementedError, match="conda"):
        procs.sync_workspace(Workspace(dirs=[d]), conda=True)


def test_host_mesh_sync_lands_files_in_the_host_root_through_a_proc_of_its_own(
    procs, tmp_path: Path
) -> None:
    d, name = _project(tmp_path, {"x.txt": "host\n"})
    res = this_host().sync_workspace(Workspace(dirs=[d])).get(60)
    assert len(res.reloaded) == 1  # its own receiving proc, stopped afterwards
    root = _root(res)
    assert (root / name / "x.txt").read_text() == "host\n"
    # the ProcMesh's procs share that root: nothing left to send them
    again = procs.sync_workspace(Workspace(dirs=[d])).get(60)
    assert (again.files_sent, _root(again)) == (0, root)
