"""The actors of the IDL-path benchmark (``generator_bench.py``): generated and plain twins.

``benchmarks/idl_bench.capnp`` is generated, once per content, into a fixed folder under the
temp directory (named after a digest of the schema and the generator), which this module puts on
``sys.path``: spawned procs import this module to unpickle the actor classes, and find the same
generated package without help from the parent.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from monarch.actor import Actor, endpoint

_HERE = Path(__file__).resolve().parent
_ROOT = _HERE.parent
SCHEMA = _HERE / "idl_bench.capnp"


def ensure_generated() -> Path:
    """The folder whose ``idlbench`` package holds the generated module (made when missing)."""
    h = hashlib.sha256(SCHEMA.read_bytes())
    for folder in (_ROOT / "generator", _ROOT / "templates"):
        for p in sorted(folder.glob("*")):
            if p.is_file():
                h.update(p.read_bytes())
    root = Path(tempfile.gettempdir()) / f"monarch-idlbench-{os.getuid()}-{h.hexdigest()[:16]}"
    if not (root / "idlbench" / "__init__.py").exists():
        from monarch.generator.generate import generate, write

        tmp = Path(tempfile.mkdtemp(prefix=root.name + ".", dir=root.parent))
        old = Path.cwd()
        os.chdir(_HERE)
        try:
            write(generate([SCHEMA.name], []), tmp / "idlbench")
        finally:
            os.chdir(old)
        try:
            os.rename(tmp, root)
        except OSError:  # another process made it first: identical
            pass
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    return root


ensure_generated()

from idlbench.idl_bench import Echo, Frame, Point  # noqa: E402


class IdlEcho(Echo):
    """The generated path: params and results are Cap'n Proto structs."""

    def point(self, p: Point) -> Point:
        return p

    def frame(self, f: Frame) -> Frame:
        return f


@dataclass
class PlainPoint:
    x: float
    y: float
    step: int
    label: str


@dataclass
class PlainFrame:
    step: int
    data: Any  # torch.Tensor


class PlainEcho(Actor):
    """The plain path: the same values as dataclasses, pickled."""

    @endpoint
    def point(self, p: PlainPoint) -> PlainPoint:
        return p

    @endpoint
    def frame(self, f: PlainFrame) -> PlainFrame:
        return f
