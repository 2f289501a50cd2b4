"""Fixtures of the generator tests: golden cases, generated case modules, the goldens flag."""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from types import ModuleType

import pytest
from gen_cases import CASE_NAMES


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
def case_package() -> Path:
    """Every case generated into one importable package ``gencases`` (its parent is on sys.path).

    The same folder the actors of spawned procs import (``case_actors.ensure_gencases``): a
    process must load each schema file id from one path only (pycapnp aborts on duplicates).
    """
    from tests.generator.case_actors import ensure_gencases

    return ensure_gencases() / "gencases"


@pytest.fixture(scope="session")
def case_modules(case_package: Path) -> dict[str, ModuleType]:
    return {name: importlib.import_module(f"gencases.{name}") for name in CASE_NAMES}
