"""Every third-party package the shipped code imports is declared in pyproject.toml."""

from __future__ import annotations

import ast
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# import name -> distribution name, where they differ
DIST = {"capnp": "pycapnp", "yaml": "pyyaml", "sklearn": "scikit-learn", "pydantic_settings": "pydantic-settings"}
# imported only where their absence is handled (optional backends, examples' extras)
OPTIONAL = {"torch", "pyverbs", "uvloop", "sklearn", "matplotlib", "kubernetes"}


def _declared() -> set[str]:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    names = set()
    for spec in data["project"]["dependencies"]:
        names.add(spec.split(";")[0].split("[")[0].split("=")[0].split(">")[0].split("<")[0].strip().lower())
    return names


def test_every_imported_package_is_declared() -> None:
    declared = _declared()
    stdlib = set(sys.stdlib_module_names)
    missing: dict[str, str] = {}
    for folder in ("runtime", "rdma", "generator", "generated"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                names = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                for name in names:
                    top = name.split(".")[0]
                    if top in stdlib or top == "monarch" or top in OPTIONAL:
                        continue
                    if DIST.get(top, top).lower().replace("_", "-") not in declared:
                        missing[top] = str(path.relative_to(ROOT))
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"
