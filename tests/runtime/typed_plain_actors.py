"""Plain Python actors as a typed user writes them: ``mypy --strict`` must accept this file as is.

``ProcMesh.spawn("c", Counter)`` is typed as ``Counter`` (the actor class stands for its mesh
to type checkers), so endpoint arguments and results are checked from the ``@endpoint`` methods
and the mesh operations chain, with no ``cast``. test_typed_plain_actors.py type-checks this
file and runs :func:`drive` on real procs; tests/generator/typed_misuse.py holds the misuses.
"""

from __future__ import annotations

from monarch.actor import Actor, ProcMesh, ValueMesh, endpoint


class Counter(Actor):
    def __init__(self, start: int) -> None:
        self.n = start

    @endpoint
    def value(self) -> int:
        return self.n

    @endpoint
    def incr(self, by: int, *, note: str = "") -> None:
        self.n += by

    @endpoint
    def label(self, prefix: str) -> str:
        return f"{prefix}{self.n}"


class AsyncEcho(Actor):
    @endpoint
    async def echo(self, text: str) -> list[str]:
        return [text, text]


def drive(procs: ProcMesh) -> tuple[int, list[int], str, list[str]]:
    """Spawn on ``procs`` (extent ``{"gpus": 2}``), call through sliced meshes, return results."""
    counters = procs.spawn("c", Counter, 10)
    counters.slice(gpus=1).incr.broadcast(5, note="five")
    one: int = procs.spawn("c1", Counter, 1).slice(gpus=1).value.call_one().get(timeout=30)
    first = counters.slice(gpus=0)
    all_values: ValueMesh[int] = counters.value.call().get(timeout=30)
    text: str = first.label.call_one("n=").get(timeout=30)
    echoes = procs.spawn("e", AsyncEcho).slice(gpus=0).echo.call_one("hi").get(timeout=30)
    size: int = counters.size("gpus") + len(counters.extent)
    counters.stop().get(timeout=30)
    return one + size, list(all_values.values()), text, echoes
