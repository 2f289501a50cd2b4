"""Golden tests: each case's generated module equals its expected.py, byte for byte."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from gen_cases import CASE_NAMES, CASES, generate_case, golden_path


@pytest.mark.parametrize("name", CASE_NAMES)
def test_generated_module_matches_golden_file(name: str, update_goldens: bool) -> None:
    produced = {k: v for k, v in generate_case(name).items() if k.endswith(".py")}
    produced.pop("__init__.py", None)
    assert f"{name}.py" in produced
    for filename, data in sorted(produced.items()):
        expected = golden_path(name, filename.removesuffix(".py"))
        if update_goldens:
            expected.write_bytes(data)
        assert expected.exists(), (
            f"{expected} is missing: write it with `pytest --update-goldens` "
            "(or MONARCH_UPDATE_GOLDENS=1) and review it"
        )
        assert data.decode() == expected.read_text(), f"{filename} differs from {expected.name}"


def test_missing_golden_file_fails_instead_of_being_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gen_cases

    case = tmp_path / "only_schema"
    case.mkdir()
    case.joinpath("only_schema.capnp").write_bytes((CASES / "enums" / "enums.capnp").read_bytes())
    monkeypatch.setattr(gen_cases, "CASES", tmp_path)
    with pytest.raises(AssertionError, match="is missing"):
        test_generated_module_matches_golden_file("only_schema", update_goldens=False)
    assert not (case / "expected.py").exists()


def test_two_runs_give_byte_identical_output() -> None:
    assert generate_case("actors") == generate_case("actors")


def test_output_has_header_and_no_absolute_paths() -> None:
    text = generate_case("structs")["structs.py"].decode()
    first = text.splitlines()[0]
    assert "structs.capnp" in first and "DO NOT EDIT" in first
    assert str(Path.cwd()) not in text and str(CASES) not in text


def _gen(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "monarch.generator.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
    )


def test_check_passes_on_fresh_output_and_lists_stale_files(tmp_path: Path) -> None:
    schema = tmp_path / "enums.capnp"
    schema.write_bytes((CASES / "enums" / "enums.capnp").read_bytes())
    assert _gen("enums.capnp", "-o", "out", cwd=tmp_path).returncode == 0
    assert _gen("enums.capnp", "-o", "out", "--check", cwd=tmp_path).returncode == 0
    (tmp_path / "out" / "enums.py").write_text("# edited\n")
    res = _gen("enums.capnp", "-o", "out", "--check", cwd=tmp_path)
    assert res.returncode == 1
    assert "out/enums.py" in res.stderr
    assert (tmp_path / "out" / "enums.py").read_text() == "# edited\n"  # --check writes nothing


def test_repository_generated_folder_is_up_to_date() -> None:
    root = Path(__file__).resolve().parents[2]
    schemas = sorted(p.relative_to(root).as_posix() for p in (root / "idl").glob("*.capnp"))
    res = _gen(*schemas, "-o", "generated", "--check", cwd=root)
    assert res.returncode == 0, res.stderr
