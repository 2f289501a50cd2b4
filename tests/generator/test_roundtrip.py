"""Every struct of the golden schemas survives encode -> decode with hypothesis-made values."""

from __future__ import annotations

import enum
import inspect
import re
import sys
from types import ModuleType
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from monarch._idl import OOB_THRESHOLD_BYTES, Struct

_INT_BOUNDS = {
    "Int8": (-(2**7), 2**7 - 1), "Int16": (-(2**15), 2**15 - 1), "Int32": (-(2**31), 2**31 - 1),
    "Int64": (-(2**63), 2**63 - 1), "UInt8": (0, 2**8 - 1), "UInt16": (0, 2**16 - 1),
    "UInt32": (0, 2**32 - 1), "UInt64": (0, 2**64 - 1),
}  # fmt: skip
_CALL = re.compile(r"^(\w+)\((.*)\)$")


def _resolve(module: str, dotted: str) -> Any:
    obj: Any = sys.modules[module]
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def _data() -> st.SearchStrategy[bytes]:
    # small values stay in the message, large ones go out of band
    return st.one_of(
        st.binary(max_size=64),
        st.binary(min_size=OOB_THRESHOLD_BYTES, max_size=OOB_THRESHOLD_BYTES + 8),
    )


def strategy(expr: str, module: str, depth: int = 0) -> st.SearchStrategy[Any] | None:
    """Values for a field type expression; None when the type cannot be made here (refs, params)."""
    if expr in _INT_BOUNDS:
        lo, hi = _INT_BOUNDS[expr]
        return st.integers(lo, hi)
    if expr == "Bool":
        return st.booleans()
    if expr == "Float64":
        return st.floats(allow_nan=False)
    if expr == "Float32":
        return st.floats(width=32, allow_nan=False)
    if expr == "Text":
        return st.text(
            st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=20
        )
    if expr == "Data":
        return _data()
    if expr == "TensorData":
        return _data().map(
            lambda b: (
                torch.frombuffer(bytearray(b), dtype=torch.uint8)
                if b
                else torch.empty(0, dtype=torch.uint8)
            )
        )
    if expr == "Tensor":
        shapes = st.lists(st.integers(0, 5), min_size=0, max_size=3)
        return shapes.map(
            lambda s: torch.arange(
                int(torch.tensor(s).prod().item()) if s else 1, dtype=torch.float32
            ).reshape(s)
        )
    if expr in ("Void", "Param", "AnyStruct") or expr.startswith("Ref("):
        return None
    m = _CALL.match(expr)
    assert m is not None, expr
    head, arg = m.groups()
    if head == "List":
        elem = strategy(arg, module, depth + 1)
        return None if elem is None else st.lists(elem, max_size=3)
    if head == "Adapted":
        return _rdma_buffers()
    cls = _resolve(module, arg)
    if head == "Enum":
        return st.sampled_from(list(cls))
    if depth > 3:
        return st.just(cls())
    try:
        return struct_strategy(cls, depth + 1)
    except _Unsupported:
        return None


def _rdma_buffers() -> st.SearchStrategy[Any]:
    """RDMA handles with arbitrary (not registered) descriptors: M.RDMABuffer fields."""
    from monarch.rdma import RDMABuffer
    from monarch.rdma._descriptor import Descriptor, VerbsRegion

    text = st.text(
        st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=12
    )
    u64 = st.integers(0, 2**64 - 1)
    verbs = st.builds(
        VerbsRegion, rkey=st.integers(0, 2**32 - 1), gid=text, lid=st.integers(0, 2**16 - 1)
    )
    descs = st.builds(
        Descriptor, region_id=u64, key=u64, record_addr=u64, addr=u64, size=u64,
        pid=st.integers(0, 2**32 - 1), start_time=u64, host=text, writable=st.booleans(),
        device=st.sampled_from(["cpu", "cuda"]), tcp_host=text, tcp_port=st.integers(0, 2**16 - 1),
        verbs=st.none() | verbs, owner=text, manager=st.binary(max_size=40),
    )  # fmt: skip
    return descs.map(RDMABuffer._from_descriptor)


class _Unsupported(Exception):
    """A required field whose values this test cannot make (mesh references)."""


def struct_strategy(cls: type[Struct], depth: int = 0) -> st.SearchStrategy[Struct]:
    info = cls.__capnp__
    required = {
        n
        for n, p in inspect.signature(cls.__init__).parameters.items()
        if p.default is inspect.Parameter.empty
    }
    plain: dict[str, st.SearchStrategy[Any]] = {}
    union: list[tuple[str, st.SearchStrategy[Any]]] = []
    for py, _wire, expr, in_union in info.fields:
        s = strategy(expr, info.module, depth)
        if s is None:
            if py in required:
                raise _Unsupported(py)
            continue
        if in_union:
            union.append((py, s))
        else:
            plain[py] = (
                s
                if py in required
                else st.one_of(st.none(), s)
                if "List" in expr or "Struct" in expr
                else s
            )
    base = st.fixed_dictionaries(plain)
    if union:
        choice = st.one_of(*[s.map(lambda v, n=n: {n: v}) for n, s in union])
        base = st.tuples(base, choice).map(lambda t: {**t[0], **t[1]})
    return base.map(
        lambda kw: cls(**{k: v for k, v in kw.items() if v is not None or k in required})
    )


def _structs(module: ModuleType) -> list[type[Struct]]:
    out: list[type[Struct]] = []

    def walk(ns: Any) -> None:
        for v in vars(ns).values():
            if (
                isinstance(v, type)
                and issubclass(v, Struct)
                and v.__module__ == module.__name__
                and v not in out
            ):
                if not getattr(v, "__parameters__", ()) and not v.__capnp__.is_group:
                    out.append(v)
                walk(v)

    walk(module)
    return out


def _same(a: Any, b: Any, expr: str, depth: int = 0) -> bool:
    if depth > 6:  # a struct holding its own type has endless defaults: Struct.__eq__ stops there
        return bool(a == b)
    if expr == "TensorData":
        return bytes(a.numpy().tobytes()) == bytes(
            b.contiguous().view(torch.uint8).numpy().tobytes()
        )
    if isinstance(a, Struct):
        return all(
            _same(getattr(a, p), getattr(b, p), e, depth + 1)
            for p, _, e, u in a.__capnp__.fields
            if not u or a.which_name() == p
        )
    if isinstance(a, torch.Tensor):
        return a.dtype == b.dtype and list(a.shape) == list(b.shape) and torch.equal(a, b)
    if expr.startswith("Adapted("):
        return bool(a._desc == b._desc)
    if expr.startswith("List(") and not isinstance(a, bytes | str):
        return len(a) == len(b) and all(_same(x, y, expr[5:-1], depth + 1) for x, y in zip(a, b))
    if isinstance(a, memoryview | bytearray | bytes):
        return bytes(a) == bytes(b)
    if isinstance(a, enum.IntEnum) or isinstance(b, enum.IntEnum):
        return int(a) == int(b) and type(b) is type(a)
    return bool(a == b)


def test_every_golden_struct_round_trips(case_modules: dict[str, ModuleType]) -> None:
    classes = [c for m in case_modules.values() for c in _structs(m)]
    assert len(classes) >= 15
    checked = 0
    for cls in classes:
        try:
            strategy_ = struct_strategy(cls)
        except _Unsupported:
            continue
        _check_class(cls, strategy_)
        checked += 1
    assert checked >= 15


def _check_class(cls: type[Struct], values: st.SearchStrategy[Struct]) -> None:
    @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
    @given(values)
    def roundtrip(value: Struct) -> None:
        payload, buffers = value._encode()
        received = [memoryview(bytearray(b)) for b in buffers]
        view = cls._decode(memoryview(bytearray(payload)), received)
        assert _same(value, view, f"Struct({cls.__qualname__})"), (value, view)
        again = cls.from_bytes(view.to_bytes())  # a view sends on unchanged
        assert _same(value, again, f"Struct({cls.__qualname__})")

    try:
        roundtrip()
    except Exception as exc:
        pytest.fail(f"{cls.__module__}.{cls.__qualname__}: {exc!r}")
