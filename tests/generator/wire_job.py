"""A small job on the IDL path, for ``test_wire_decode``: run it with frame capture on.

``MONARCH_CAPTURE_FRAMES_DIR=DIR python -m tests.generator.wire_job [--tensors]`` spawns one proc,
calls ``Shop.find`` (params: the named struct ``Query``) and, with ``--tensors``,
``DataLoader.batch`` of ``idl/trainer.capnp`` (a ``Batch`` of tensors: out-of-band buffers),
prints the results as one JSON line and stops the proc. A separate process, so that capture is
on from the client runtime's start and in every proc it starts.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from monarch.generated.trainer import Batch, DataLoader

from tests.generator import case_actors

ROWS, FEATURES = 32, 64  # float32 inputs of 8 KiB: out of band (the codec's threshold is 4 KiB)


def batch_tensors(step: int) -> tuple[Any, Any]:
    """The ``(inputs, labels)`` that :class:`WireLoader` answers for ``step``."""
    import torch

    inputs = (
        torch.arange(ROWS * FEATURES, dtype=torch.float32).reshape(ROWS, FEATURES)
        / (ROWS * FEATURES)
        + step
    )
    labels = torch.arange(ROWS, dtype=torch.int64) % 10
    return inputs, labels


class WireLoader(DataLoader):
    """Answers ``batch`` with tensors computed from the step, so the test knows their bytes."""

    def batch(self, step: int) -> Batch:
        inputs, labels = batch_tensors(step)
        return Batch(step=step, inputs=inputs, labels=labels)

    def shard_size(self) -> int:
        return ROWS


def main(argv: list[str]) -> None:
    from monarch.testing import proc_mesh

    out: dict[str, Any] = {}
    with proc_mesh({"gpus": 1}) as procs:
        shop = procs.spawn("shop", case_actors.PagedShop)
        page = shop.find.call_one("pen", limit=2).get(timeout=60)
        out["find"] = [item.name for item in page.items.list_]
        if "--tensors" in argv:
            loader = procs.spawn("loader", WireLoader)
            got = loader.batch.call_one(7).get(timeout=60)
            out["batch"] = [got.step, list(got.inputs.shape), list(got.labels.shape)]
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
