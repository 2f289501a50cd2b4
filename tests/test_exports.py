"""Every public object shows its public ``__module__`` and is listed in exactly one ``__all__``."""

from __future__ import annotations

import importlib
import types

import pytest

PUBLIC = ["monarch", "monarch.actor", "monarch.stubs", "monarch.testing", "monarch.config", "monarch.cli", "monarch.rdma"]
# attributes that are settable slots rather than objects with a home
SLOTS = {("monarch.actor", "unhandled_fault_hook")}


def _exports() -> list[tuple[str, str, object]]:
    out = []
    for name in PUBLIC:
        mod = importlib.import_module(name)
        for attr in getattr(mod, "__all__", []):
            if (name, attr) not in SLOTS:
                out.append((name, attr, getattr(mod, attr)))
    return out


@pytest.mark.parametrize("module", PUBLIC)
def test_every_name_in_all_exists(module: str) -> None:
    mod = importlib.import_module(module)
    missing = [n for n in getattr(mod, "__all__", []) if not hasattr(mod, n)]
    assert not missing


def test_public_classes_and_functions_show_their_public_module() -> None:
    bad = []
    for module, attr, obj in _exports():
        if isinstance(obj, type | types.FunctionType):
            home = obj.__module__
            if home.startswith("monarch") and home != module:
                bad.append(f"{module}.{attr} says it lives in {home}")
    assert not bad, "\n".join(bad)


def test_every_public_object_is_exported_by_one_module_only() -> None:
    homes: dict[int, list[str]] = {}
    for module, attr, obj in _exports():
        if isinstance(obj, type | types.FunctionType):
            homes.setdefault(id(obj), []).append(f"{module}.{attr}")
    dups = [v for v in homes.values() if len(v) > 1]
    assert not dups, dups


def test_a_published_class_pickles_by_its_public_name() -> None:
    import pickle

    from monarch.actor import ActorError

    err = pickle.loads(pickle.dumps(ActorError(ValueError("x"))))
    assert type(err) is ActorError and type(err).__module__ == "monarch.actor"
