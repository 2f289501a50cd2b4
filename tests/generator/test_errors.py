"""Every bad schema exits with status 1, prints ``path:line:col: message`` and writes nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ID = "@0xd1e2f3a4b5c6d7e8;\n"
USING = 'using M = import "/monarch/actor.capnp";\n'

BAD: dict[str, tuple[str, str]] = {
    "syntax_error": (
        ID + "struct A {\n  x @0 :Int32\n  y @1 :Int32;\n}\n",
        "bad.capnp:4:3: Parse error.",
    ),
    "unknown_type": (ID + "struct A {\n  x @0 :Nope;\n}\n", "bad.capnp:3:9: Not defined: Nope"),
    "missing_import": (
        ID + 'using X = import "nothere.capnp";\nstruct A { x @0 :X.B; }\n',
        "bad.capnp:2:19: Import failed: nothere.capnp",
    ),
    "missing_file_id": (
        "struct A {\n  x @0 :Int32;\n}\n",
        "bad.capnp:1:1: File does not declare an ID.",
    ),
    "duplicate_id": (
        ID
        + "struct A @0xd1e2f3a4b5c6d7e5 { x @0 :Int32; }\nstruct B @0xd1e2f3a4b5c6d7e5 { x @0 :Int32; }\n",
        "bad.capnp:3:10: Duplicate ID @0xd1e2f3a4b5c6d7e5.",
    ),
    "raw_interface_field": (
        ID + USING + "interface Foo $M.actor { f @0 (); }\nstruct A {\n  foo @0 :Foo;\n}\n",
        "bad.capnp:5:3: A.foo: a raw interface type (Foo) cannot be sent; use M.ActorRef(Foo)",
    ),
    "stream_and_rref": (
        ID + USING + "interface Foo $M.actor {\n  f @0 () -> (x :Int32) $M.stream $M.rref;\n}\n",
        "bad.capnp:4:3: $stream and $rref cannot be combined on one endpoint",
    ),
    "tensor_on_non_data": (
        ID + USING + "struct A {\n  x @0 :Int32 $M.tensor;\n}\n",
        "bad.capnp:4:3: A.x: $tensor applies to Data fields only, not int32",
    ),
    "field_name_clash": (
        ID + "struct A {\n  fooBar @0 :Int32;\n  fooBAR @1 :Int32;\n}\n",
        "bad.capnp:4:3: name clash after renaming: 'fooBAR' and 'fooBar' both become 'foo_bar'",
    ),
    "class_name_clash": (
        ID + USING + "struct FooMesh {}\ninterface Foo $M.actor {\n  f @0 ();\n}\n",
        "bad.capnp:4:11: name clash after renaming: interface Foo and struct FooMesh both define 'FooMesh'",
    ),
    "method_name_clash": (
        ID + USING + "interface Foo $M.actor {\n  doIt @0 ();\n  doIT @1 ();\n}\n",
        "bad.capnp:5:3: name clash after renaming: method 'doIT' and 'doIt' both become 'do_it'",
    ),
    "actor_ref_to_non_actor": (
        ID + USING + "struct S {}\nstruct A {\n  r @0 :M.ActorRef(S);\n}\n",
        "bad.capnp:5:3: A.r: M.ActorRef(T) needs an $M.actor interface as T",
    ),
    "raw_interface_parameter": (
        ID + USING + "interface Foo $M.actor { f @0 (); }\n"
        "interface Bar $M.actor {\n  g @0 (n :UInt8, foo :Foo) -> ();\n}\n",
        "bad.capnp:5:19: Bar.g.foo: a raw interface type (Foo) cannot be sent; use M.ActorRef(Foo)",
    ),
    "actor_ref_to_non_actor_result": (
        ID + USING + "struct S {}\ninterface Bar $M.actor {\n  g @0 () -> (r :M.ActorRef(S));\n}\n",
        "bad.capnp:5:15: Bar.g.r: M.ActorRef(T) needs an $M.actor interface as T",
    ),
    "any_list_in_group": (
        ID + "struct A {\n  g :group {\n    xs @0 :AnyList;\n  }\n}\n",
        "bad.capnp:4:5: A.g.xs: AnyList is not supported",
    ),
    "duplicate_ordinal_names_first_use": (
        ID + "struct A {\n  x @0 :Int32;\n  struct N { q @1 :Int32; }\n"
        "  g :group {\n    z @1 :Int32;\n  }\n  y @1 :Int32;\n}\n",
        "bad.capnp:8:3: Duplicate ordinal number: first used at bad.capnp:6:7",
    ),
    "duplicate_ordinal_on_one_line_names_both": (
        ID + "enum E { a @0; b @1; c @0; }\n",
        "bad.capnp:2:22: Duplicate ordinal number: first used at bad.capnp:2:12",
    ),
    "missing_actor_import_suggests_it": (
        ID + "interface Foo $M.actor {\n  f @0 ();\n}\n",
        'bad.capnp:2:16: Not defined: M (add the line: using M = import "/monarch/actor.capnp";)',
    ),
    "list_nested_too_deep": (
        ID + "struct A {\n  x @0 :" + "List(" * 40 + "Int32" + ")" * 40 + ";\n}\n",
        "bad.capnp:3:3: A.x: List nested 40 deep; monarch-gen supports at most 32",
    ),
    "nested_struct_uses_the_parents_generic_parameter": (
        ID + "struct Outer(T) {\n  value @0 :T;\n  struct Inner {\n    item @0 :T;\n  }\n}\n",
        "bad.capnp:5:5: Outer.Inner.item: uses the generic parameter T of its enclosing struct "
        "Outer: not supported; declare it at the top level with its own parameter "
        "(struct Inner(T) { ... }, used as Inner(T) inside Outer)",
    ),
    "nested_struct_binds_the_parents_generic_parameter": (
        ID + "struct Box(U) { v @0 :U; }\nstruct Outer(T) {\n  struct Inner {\n"
        "    box @0 :Box(T);\n  }\n}\n",
        "bad.capnp:5:5: Outer.Inner.box: uses the generic parameter T of its enclosing struct Outer",
    ),
    "group_in_a_union_uses_the_parents_generic_parameter": (
        ID + "struct Outer(Item) {\n  u :union {\n    a @0 :Text;\n"
        "    g :group { x @1 :Item; }\n  }\n}\n",
        "bad.capnp:5:16: Outer.u.g.x: uses the generic parameter Item of its enclosing struct "
        "Outer: not supported; declare it at the top level with its own parameter "
        "(struct G(Item) { ... }, used as G(Item) inside Outer)",
    ),
    "generic_actor_interface": (
        ID + USING + "interface Foo(T) $M.actor {\n  f @0 (x :T) -> ();\n}\n",
        "bad.capnp:3:11: generic actor interfaces are not supported (Foo(T))",
    ),
    "two_bases_with_one_endpoint_name": (
        ID + USING + "interface A $M.actor { reset @0 (); }\n"
        "interface B $M.actor { reset @0 (hard :Bool); }\n"
        "interface C extends(A, B) $M.actor {\n  c @0 ();\n}\n",
        "bad.capnp:5:11: name clash in the bases of C: endpoints A.reset and B.reset both "
        "become 'reset' (rename one of them)",
    ),
    "parser_crash_reports_the_signal": (
        ID + "struct A {\n  x @0 :" + "List(" * 3000 + "Int32" + ")" * 3000 + ";\n}\n",
        "bad.capnp:1:1: the schema parser (pycapnp, in a child process) crashed with SIGSEGV",
    ),
}


def _run(tmp_path: Path, text: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "bad.capnp").write_text(text)
    return subprocess.run(
        [sys.executable, "-m", "monarch.generator.cli", "bad.capnp", "-o", "out"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_schema_exits_1_with_location_and_leaves_no_output(tmp_path: Path, case: str) -> None:
    text, expected = BAD[case]
    res = _run(tmp_path, text)
    assert res.returncode == 1
    assert res.stderr.strip().splitlines()[0].startswith(expected), res.stderr
    assert "Traceback" not in res.stderr and "terminate called" not in res.stderr
    assert not (tmp_path / "out").exists()


def test_missing_schema_file_is_a_schema_error(tmp_path: Path) -> None:
    res = subprocess.run(
        [sys.executable, "-m", "monarch.generator.cli", "nothere.capnp"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 1
    assert res.stderr.startswith("nothere.capnp:0:0: no such schema file")


def _gen(tmp_path: Path, name: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "monarch.generator.cli", name, "-o", "out"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def test_directory_given_as_schema_says_it_is_a_directory(tmp_path: Path) -> None:
    (tmp_path / "dir.capnp").mkdir()
    res = _gen(tmp_path, "dir.capnp")
    assert res.returncode == 1
    assert res.stderr.startswith("dir.capnp:0:0: is a directory, not a schema file"), res.stderr


def test_fifo_given_as_schema_is_rejected_without_blocking(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.capnp")
    res = _gen(tmp_path, "pipe.capnp")  # opening a FIFO to read would block: it must not
    assert res.returncode == 1
    assert res.stderr.startswith("pipe.capnp:0:0: is a FIFO"), res.stderr


def test_import_of_a_schema_not_generated_in_the_run_is_named_with_its_place(
    tmp_path: Path,
) -> None:
    (tmp_path / "notes.capnp").write_text(
        "@0xd1e2f3a4b5c6d7e1;\nannotation note @0xd1e2f3a4b5c6d7e2 (*) :Text;\n"
    )
    text = ID + 'using N = import "notes.capnp";\nstruct A $N.note("x") {\n  x @0 :Int32;\n}\n'
    res = _run(tmp_path, text)  # the generated module would fail to load notes.capnp
    assert res.returncode == 1
    assert res.stderr.startswith(
        "bad.capnp:2:18: imports 'notes.capnp', which is not generated in this run"
    ), res.stderr
    assert not (tmp_path / "out").exists()
