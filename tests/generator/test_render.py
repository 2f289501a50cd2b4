"""Validation of rendered modules: parse errors and top-level name clashes are generator bugs."""

from __future__ import annotations

import pytest
from monarch._core.errors import GenerationError
from monarch.generator import ir
from monarch.generator.render import _top_level_names, _validate

MODULE = ir.Module(
    source="x.capnp", schema_file="x.capnp", doc="", imports=[], typing_names=[], abc_names=[],
    typevars=[], uses_torch=False, uses_enum=False, enums=[], structs=[], internal_structs=[],
    consts=[], interfaces=[],
)  # fmt: skip


def test_top_level_names_match_one_whole_parse_even_across_a_docstring_with_blank_lines() -> None:
    source = (
        'A = 1\n\n\nclass B:\n    """x\n\n\n    y"""\n\n\nC: int = 2\n\n\ndef d() -> None: ...\n'
    )
    assert _top_level_names(source) == [("A", 1), ("B", 4), ("C", 11), ("d", 14)]


def test_name_defined_twice_is_a_generation_error() -> None:
    with pytest.raises(GenerationError, match="'B' is defined twice"):
        _validate("class B:\n    pass\n\n\nB = 1\n", MODULE)


def test_source_that_does_not_parse_is_a_generation_error() -> None:
    with pytest.raises(GenerationError, match="does not parse"):
        _validate("def f(:\n", MODULE)
