"""``monarch-gen compat``: every breaking change is reported at its place, compatible ones pass."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent / "compat"
V1 = (HERE / "store_v1.capnp").read_text()


def _compat(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "monarch.generator.cli", "compat", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def test_compatible_version_passes_and_verbose_lists_every_change() -> None:
    res = _compat("store_v1.capnp", "store_v2.capnp", "--verbose", cwd=HERE)
    assert res.returncode == 0, res.stdout + res.stderr
    out = res.stdout.splitlines()
    assert all(": compatible: " in line for line in out)
    for expected in (
        "store_v2.capnp:4:30: compatible: Item.label @1: renamed from 'name'",
        "store_v2.capnp:4:46: compatible: new field Item.size @2",
        "store_v2.capnp:10:3: compatible: new field Job.priority @5",
        "store_v2.capnp:9:41: compatible: new field Job.blob @6",
        "store_v2.capnp:3:22: compatible: Mode.careful (= 1): renamed from 'safe'",
        "store_v2.capnp:3:34: compatible: new enumerant Mode.paranoid = 2",
        "store_v2.capnp:15:11: compatible: Store.get.key @0: renamed from 'id'",
        "store_v2.capnp:17:3: compatible: new method Store.drop @3",
        "store_v2.capnp:12:8: compatible: new struct Extra",
    ):
        assert any(line.startswith(expected) for line in out), (expected, out)
    quiet = _compat("store_v1.capnp", "store_v2.capnp", cwd=HERE)
    assert quiet.returncode == 0 and quiet.stdout == ""


BREAKING: dict[str, tuple[str, str, str]] = {
    # name: (text in v1, replacement, expected report line prefix)
    "field_type": ("id @0 :UInt32;", "id @0 :UInt64;", "new.capnp:4:15: breaking: Item.id @0: type changed from UInt32 to UInt64"),
    "field_removed": ("id @0 :UInt32; name @1 :Text;", "id @0 :UInt32;", "old.capnp:4:30: breaking: Item.name @1 removed"),
    "default_changed": ("mode @1 :Mode = safe;", "mode @1 :Mode = fast;", "new.capnp:7:3: breaking: Job.mode @1: default value changed"),
    "out_of_union": ("union { none @3 :Void; text @4 :Text; }", "none @3 :Void; text @4 :Text;", "new.capnp:9:3: breaking: Job.none @3: moved into or out of a union"),
    "enumerant_removed": ("enum Mode { fast @0; safe @1; }", "enum Mode { fast @0; }", "new.capnp:3:6: breaking: Mode.safe (= 1) removed"),
    "method_renamed": ("get @1 (id", "fetch @1 (id", "new.capnp:13:3: breaking: Store.fetch @1: renamed from 'get'"),
    "method_removed": ("  count @2 () -> (n :UInt32);\n", "", "old.capnp:14:3: breaking: Store.count @2 removed: old clients still call it"),
    "method_reordered": (
        "  get @1 (id :UInt64) -> (job :Job);\n  count @2 () -> (n :UInt32);",
        "  count @1 () -> (n :UInt32);\n  get @2 (id :UInt64) -> (job :Job);",
        "new.capnp:14:3: breaking: Store.get: ordinal changed from @1 to @2",
    ),
    "stream_added": ("count @2 () -> (n :UInt32);", "count @2 () -> (n :UInt32) $M.stream;", "new.capnp:14:3: breaking: Store.count: $M.stream added or removed"),
    "param_type": ("put @0 (job :Job)", "put @0 (job :Item)", "new.capnp:12:11: breaking: Store.put.job @0: type changed from Job to Item"),
    "result_type": ("-> (ok :Bool)", "-> (ok :UInt8)", "new.capnp:12:25: breaking: Store.put.ok @0: type changed from Bool to UInt8"),
    "interface_id": ("interface Store $M.actor", "interface Store @0xbd3c7ad1d6b2f1e3 $M.actor", "new.capnp:11:11: breaking: Store: id changed from"),
    "actor_removed": ("interface Store $M.actor", "interface Store", "new.capnp:11:11: breaking: Store: no longer an $M.actor interface"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(BREAKING))
def test_breaking_change_exits_1_and_names_its_place(tmp_path: Path, case: str) -> None:
    before, after, expected = BREAKING[case]
    assert before in V1
    (tmp_path / "old.capnp").write_text(V1)
    new = V1.replace(before, after)
    if case == "enumerant_removed":  # its default must go too, or the schema does not parse
        new = new.replace("mode @1 :Mode = safe;", "mode @1 :Mode;")
    (tmp_path / "new.capnp").write_text(new)
    res = _compat("old.capnp", "new.capnp", cwd=tmp_path)
    assert res.returncode == 1, res.stdout + res.stderr
    assert any(line.startswith(expected) for line in res.stdout.splitlines()), res.stdout


def test_struct_renamed_with_its_id_kept_is_compatible_and_without_it_is_a_type_change(
    tmp_path: Path,
) -> None:
    (tmp_path / "old.capnp").write_text(V1)
    kept = V1.replace("struct Item {", "struct Entry @0xee26f3d378cd95e3 {")
    (tmp_path / "kept.capnp").write_text(kept.replace("List(Item)", "List(Entry)"))
    res = _compat("old.capnp", "kept.capnp", "--verbose", cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "kept.capnp:4:8: compatible: Entry: renamed from 'Item'" in res.stdout, res.stdout
    (tmp_path / "lost.capnp").write_text(
        V1.replace("struct Item {", "struct Entry {").replace("List(Item)", "List(Entry)")
    )
    res = _compat("old.capnp", "lost.capnp", cwd=tmp_path)
    assert res.returncode == 1
    assert res.stdout.startswith(
        "lost.capnp:8:3: breaking: Job.items @2: type changed from List(Item) to List(Entry)"
    ), res.stdout


def test_generic_and_actor_ref_arguments_are_named_in_type_changes(tmp_path: Path) -> None:
    schema = (
        V1.replace("struct Job {", "struct Page(T) { items @0 :T; }\nstruct Job {")
        .replace("  count @2 () -> (n :UInt32);", "  count @2 () -> Page(Job);\n  self @3 (me :M.ActorRef(Store));")
        + "interface Other $M.actor { }\n"
    )  # fmt: skip
    (tmp_path / "old.capnp").write_text(schema)
    new = schema.replace("-> Page(Job);", "-> Page(Item);")
    new = new.replace("ActorRef(Store)", "ActorRef(Other)")
    (tmp_path / "new.capnp").write_text(new)
    res = _compat("old.capnp", "new.capnp", cwd=tmp_path)
    assert res.returncode == 1, res.stdout + res.stderr
    out = res.stdout
    assert ": breaking: Store.count: results type changed from Page(Job) to Page(Item)" in out, out
    assert (
        ": breaking: Store.self.me @0: type changed from ActorRef(Store) to ActorRef(Other)" in out
    ), out


def test_identical_schema_has_no_changes(tmp_path: Path) -> None:
    (tmp_path / "a.capnp").write_text(V1)
    (tmp_path / "b.capnp").write_text(V1)
    res = _compat("a.capnp", "b.capnp", "--verbose", cwd=tmp_path)
    assert (res.returncode, res.stdout) == (0, "")


def test_against_git_revision_compares_with_the_committed_version(tmp_path: Path) -> None:
    def git(*args: str) -> None:
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True, timeout=60)

    git("init", "-q")
    (tmp_path / "idl").mkdir()
    (tmp_path / "idl" / "store.capnp").write_text(V1)
    git("add", "idl/store.capnp")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "v1")
    git("tag", "v0.1.0")
    (tmp_path / "idl" / "store.capnp").write_text(V1.replace("get @1 (id", "fetch @1 (id"))
    res = _compat("--against", "v0.1.0", "idl/store.capnp", cwd=tmp_path)
    assert res.returncode == 1, res.stdout + res.stderr
    assert res.stdout.startswith(
        "idl/store.capnp:13:3: breaking: Store.fetch @1: renamed from 'get'"
    )
    (tmp_path / "idl" / "store.capnp").write_text(V1)
    assert _compat("--against", "v0.1.0", "idl/store.capnp", cwd=tmp_path).returncode == 0
    bad = _compat("--against", "nosuchrev", "idl/store.capnp", cwd=tmp_path)
    assert bad.returncode == 2 and "nosuchrev" in bad.stderr
