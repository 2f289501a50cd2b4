"""Fixtures of the generator tests: golden cases, generated case modules, the goldens flag."""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest
from gen_cases import CASE_NAMES, generate_outputs
from monarch.generator.generate import write


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-goldens",
        action="store_true",
        help="(re)write tests/generator/cases/*/expected*.py (also: MONARCH_UPDATE_GOLDENS=1)",
    )


@pytest.fixture
def update_goldens(request: pytest.FixtureRequest) -> bool:
    try:
        flag = bool(request.config.getoption("--update-goldens"))
    except ValueError:
        flag = False
    return flag or os.environ.get("MONARCH_UPDATE_GOLDENS") == "1"


@pytest.fixture(scope="session")
def case_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every case generated into one importable package ``gencases`` (its parent is on sys.path)."""
    root = tmp_path_factory.mktemp("cases")
    pkg = root / "gencases"
    for name in CASE_NAMES:
        write(generate_outputs(name), pkg)
    sys.path.insert(0, str(root))
    return pkg


@pytest.fixture(scope="session")
def case_modules(case_package: Path) -> dict[str, ModuleType]:
    return {name: importlib.import_module(f"gencases.{name}") for name in CASE_NAMES}
