"""The import graph follows the layer table of STYLE.md (checked with ``ast``, no imports run).

Layers, low to high; a module imports only from its own layer or lower:

1. ``monarch._core`` (stdlib only), ``monarch.config`` (pydantic-settings; imports ``_core``) and
   the package ``monarch`` itself (a docstring and ``__version__``)
2. ``monarch._transport``
3. ``monarch._mesh`` and ``monarch._idl`` (``_idl`` uses ``_mesh.endpoint``)
4. public modules: ``monarch.actor``, ``monarch.stubs``, ``monarch.testing``
5. ``monarch.cli`` (the entry point over every tool), ``monarch.rdma``, ``monarch.generator``, ``monarch.generated``, ``monarch.tensor``,
   ``monarch.tools`` (the admin endpoint, code sync, the debugger, the TUI and the dashboard),
   ``monarch.job`` (jobs on schedulers), ``monarch.spmd``

Further rules: ``monarch._mesh.current`` (the process's runtime slot) is read only by the
user-facing objects and the composition root; the runtime never imports the generator; generated
code imports only ``monarch.stubs`` (and ``monarch.rdma`` for ``M.RDMABuffer``).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = {"runtime": "monarch", "rdma": "monarch.rdma", "generator": "monarch.generator", "generated": "monarch.generated"}

LAYERS: list[tuple[str, int]] = [
    ("monarch._core", 1),
    ("monarch.config", 1),
    ("monarch._transport", 2),
    ("monarch._mesh", 3),
    ("monarch._idl", 3),
    ("monarch.actor", 4),
    ("monarch.stubs", 4),
    ("monarch.testing", 4),
    ("monarch.cli", 5),
    ("monarch.rdma", 5),
    ("monarch.generator", 5),
    ("monarch.generated", 5),
    ("monarch.tensor", 5),
    ("monarch.tools", 5),
    ("monarch.job", 5),
    ("monarch.spmd", 5),
    ("monarch", 1),  # the package itself: a docstring and __version__
]

# the user-facing objects (and the composition root, and a proc's entry point) may read the
# process's runtime slot; nothing below them may
CURRENT_READERS = {
    "monarch._mesh.actor_mesh",
    "monarch._mesh.proc_mesh",
    "monarch._mesh.session",
    "monarch._mesh.port",
    "monarch._mesh.context",
    "monarch._mesh.runtime",
    "monarch._mesh.proc_main",
    "monarch._mesh.controller",
    "monarch.rdma._manager",
}


def layer_of(module: str) -> int:
    for prefix, layer in LAYERS:
        if module == prefix or module.startswith(prefix + "."):
            return layer
    raise AssertionError(f"{module} has no layer in STYLE.md's table")


def _modules() -> dict[str, Path]:
    out = {}
    for folder, package in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            out[".".join([package, *parts])] = path
    return out


def _imports(module: str, path: Path) -> list[tuple[str, int]]:
    """Every ``monarch`` module that ``module`` imports (at any depth in the file), with lines."""
    tree = ast.parse(path.read_text(), str(path))
    is_package = path.name == "__init__.py"
    package = module if is_package else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names if a.name.split(".")[0] == "monarch"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "monarch":
                continue
            found.append((target, node.lineno))
            for alias in node.names:  # ``from . import zygote`` imports a module
                found.append((f"{target}.{alias.name}", node.lineno))
    return found


MODULES = _modules()


def _known(target: str) -> str | None:
    """The module ``target`` names (an attribute import resolves to its module)."""
    while target and target not in MODULES:
        target = target.rpartition(".")[0]
    return target or None


def test_every_module_has_a_layer() -> None:
    for module in MODULES:
        layer_of(module)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_module_imports_only_its_layer_or_lower(module: str) -> None:
    mine = layer_of(module)
    bad = []
    for target, line in _imports(module, MODULES[module]):
        real = _known(target)
        if real is None or real == module:
            continue
        if layer_of(real) > mine:
            bad.append(f"{MODULES[module].relative_to(ROOT)}:{line}: {module} (layer {mine}) imports {real} (layer {layer_of(real)})")
    assert not bad, "\n".join(bad)


def test_only_user_facing_objects_read_the_runtime_slot() -> None:
    bad = []
    for module, path in MODULES.items():
        if module in CURRENT_READERS or module == "monarch._mesh.current":
            continue
        for target, line in _imports(module, path):
            if _known(target) == "monarch._mesh.current":
                bad.append(f"{path.relative_to(ROOT)}:{line}: {module} reads the process's runtime slot")
    assert not bad, "\n".join(bad)


def test_runtime_never_imports_the_generator() -> None:
    for module, path in MODULES.items():
        if layer_of(module) < 5:
            for target, line in _imports(module, path):
                assert not (_known(target) or "").startswith("monarch.generator"), f"{path}:{line}"


def test_generated_code_imports_only_the_stubs() -> None:
    allowed = {"monarch.stubs", "monarch.rdma"}
    for module, path in MODULES.items():
        if module.startswith("monarch.generated."):
            for target, line in _imports(module, path):
                real = _known(target) or target
                if real == "monarch":
                    continue  # ``from monarch import stubs`` also lists the stubs module itself
                assert real in allowed, f"{path}:{line}: generated code imports {real}"


def test_importing_monarch_actor_loads_no_heavy_package_and_starts_nothing() -> None:
    code = (
        "import json, os, sys, threading\n"
        "import monarch.actor\n"
        "kids = [p for p in os.listdir('/proc') if p.isdigit() and "
        "open(f'/proc/{p}/stat').read().rsplit(')', 1)[1].split()[1] == str(os.getpid())]\n"
        "heavy = [m for m in ('torch', 'jinja2', 'pyverbs', 'monarch.generator', 'pydantic_settings') if m in sys.modules]\n"
        "print(json.dumps({'threads': threading.active_count(), 'children': kids, 'heavy': heavy}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got == {"threads": 1, "children": [], "heavy": []}, got
