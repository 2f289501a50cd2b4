"""Hierarchical aggregation over a ``{"hosts": 2, "gpus": 2}`` mesh (plain Python actor API).

Every actor holds a local value. The actor with ``gpus=0`` on each host is that host's leader:
it gathers the values of the other actors of its host (``mesh.slice(hosts=h, gpus=slice(1, n))``,
a ``call`` to a sub-mesh, actor to actor; not to itself: an actor handles one message at a time,
so calling itself from inside an endpoint would wait forever) and returns the host's sum; the client then only talks to the two leaders
(``mesh.slice(gpus=0)``) and sums their partial sums: two levels instead of one flat gather.

Run: ``python examples/hierarchical_aggregation.py``.
"""

from __future__ import annotations

import sys
from typing import Any

from monarch.actor import Actor, context, endpoint, this_host


class Reporter(Actor):
    """Holds ``value = 10 * hosts + gpus + 1``; leaders aggregate their host."""

    def __init__(self) -> None:
        point = context().actor_instance.rank
        self.point = dict(point)
        self.value = 10 * point["hosts"] + point["gpus"] + 1
        self.mesh: Any = None

    @endpoint
    def set_mesh(self, mesh: Any) -> None:
        self.mesh = mesh

    @endpoint
    def local_value(self) -> int:
        return self.value

    @endpoint
    def aggregate_host(self) -> tuple[int, int]:
        """Sum the values of this actor's host; returns ``(sum, contributors)``."""
        gpus = self.mesh.extent["gpus"]
        others = self.mesh.slice(hosts=self.point["hosts"], gpus=slice(1, gpus))
        values = others.local_value.call().get()
        return self.value + sum(values.values()), 1 + len(values)


def main() -> int:
    procs = this_host().spawn_procs(per_host={"hosts": 2, "gpus": 2})
    try:
        mesh = procs.spawn("reporters", Reporter)
        print(f"mesh extent: {dict(mesh.extent)}")
        mesh.set_mesh.broadcast(mesh)
        leaders = mesh.slice(gpus=0)
        partial = leaders.aggregate_host.call().get(timeout=60)
        for point, (s, n) in partial.items():
            print(f"host leader {dict(point)}: sum {s} over {n} actors")
        total = sum(s for s, _ in partial.values())
        flat = sum(mesh.local_value.call().get(timeout=60).values())
    finally:
        procs.stop().get(30)
    ok = total == flat == (1 + 2 + 11 + 12)
    print(
        f"hierarchical aggregation: total {total} (flat gather {flat}) {'ok' if ok else 'FAILED'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
