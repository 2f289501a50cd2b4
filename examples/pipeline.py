"""A three-stage pipeline, through the stubs generated from ``idl/pipeline.capnp``.

Three implementations of the one ``Stage`` interface run on three procs: ``Normalize`` scales
each item's values to unit sum, ``Square`` squares them, ``Collect`` keeps what reaches it.
Each stage forwards its output to the next with ``broadcast`` (fire and forget); per-sender FIFO
order keeps the items in order end to end, and ``flush`` (a call that goes down the same path)
returns only once every item pushed before it has gone through.

Run: ``python examples/pipeline.py [--items 50]``.
"""

from __future__ import annotations

import argparse
import sys
from abc import abstractmethod
from collections.abc import Sequence

from monarch.actor import this_host
from monarch.generated.pipeline import Item, Stage, StageMesh


class _Forwarding(Stage):
    """The stage plumbing: process, sign, forward or keep."""

    name = "stage"

    def __init__(self) -> None:
        self.next: StageMesh | None = None
        self.kept: list[Item] = []
        self.count = 0

    @abstractmethod
    def process(self, values: Sequence[float]) -> list[float]:
        """This stage's work on one item's values."""

    def connect(self, next_: StageMesh) -> None:
        self.next = next_

    def push(self, item: Item) -> None:
        self.count += 1
        out = Item(seq=item.seq, values=self.process(item.values), trace=[*item.trace, self.name])
        if self.next is not None:
            self.next.push.broadcast(out)
        else:
            self.kept.append(out)

    def flush(self) -> int:
        if self.next is not None:
            self.next.flush.call_one().get()
        return self.count

    def drain(self) -> Sequence[Item]:
        kept, self.kept = self.kept, []
        return kept


class Normalize(_Forwarding):
    name = "normalize"

    def process(self, values: Sequence[float]) -> list[float]:
        total = sum(values)
        return [v / total for v in values]


class Square(_Forwarding):
    name = "square"

    def process(self, values: Sequence[float]) -> list[float]:
        return [v * v for v in values]


class Collect(_Forwarding):
    name = "collect"

    def process(self, values: Sequence[float]) -> list[float]:
        return list(values)


def main() -> int:
    parser = argparse.ArgumentParser(description="A three-stage pipeline (generated stubs).")
    parser.add_argument("--items", type=int, default=50)
    args = parser.parse_args()

    procs = this_host().spawn_procs(per_host={"stages": 3})
    try:
        first = procs.slice(stages=0).spawn("normalize", Normalize)
        second = procs.slice(stages=1).spawn("square", Square)
        third = procs.slice(stages=2).spawn("collect", Collect)
        first.connect.broadcast(second)
        second.connect.broadcast(third)
        for seq in range(args.items):
            first.push.broadcast(Item(seq=seq, values=[1.0, 2.0, 1.0 + seq]))
        processed = first.flush.call_one().get(timeout=60)
        items = third.drain.call_one().get()
    finally:
        procs.stop().get(30)
    in_order = [item.seq for item in items] == list(range(args.items))
    traced = all(list(item.trace) == ["normalize", "square", "collect"] for item in items)
    expected = [(1 / (4 + s)) ** 2 for s in range(args.items)]
    values_ok = all(abs(item.values[0] - e) < 1e-12 for item, e in zip(items, expected))
    ok = processed == args.items and len(items) == args.items and in_order and traced and values_ok
    print(f"last item: {items[-1]!r}" if items else "no items")
    print(
        f"pipeline: {len(items)}/{args.items} items through 3 stages, in order={in_order} {'ok' if ok else 'FAILED'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
