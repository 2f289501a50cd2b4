"""The seed's tensor-engine pattern (Meta Monarch's getting-started): distributed tensors on a
2x2 mesh of procs, a reduce over "gpus", an actor endpoint via ``rref``, and a fetch.

Run: python examples/tensor_seed.py
"""

from __future__ import annotations

import monarch
import torch
from monarch.actor import Actor, endpoint, this_host


class Scaler(Actor):
    """Multiplies a rank's local tensor by its rank + 1 (an rref endpoint)."""

    @endpoint(propagate=lambda t: t)
    def scale(self, t: torch.Tensor) -> torch.Tensor:
        from monarch.actor import context

        return t * (context().actor_instance.rank.rank + 1)


def main() -> None:
    procs = this_host().spawn_procs(per_host={"hosts": 2, "gpus": 2})
    try:
        scaler = procs.spawn("scaler", Scaler)
        with procs.activate():
            torch.manual_seed(0)  # seeds the client only (as in Monarch); ranks draw their own
            t = torch.rand(3, 4)
            r = t @ t.T
            s = r.reduce("gpus", "sum")  # all_reduce over the "gpus" dimension
            k = scaler.scale.rref(t)
        vt = [monarch.inspect(t, hosts=0, gpus=g) for g in range(2)]
        vr, vs = monarch.fetch_shard((r, s), hosts=0, gpus=0).get(60)
        vk = monarch.inspect(k, hosts=1, gpus=1)
        assert torch.allclose(vr, vt[0] @ vt[0].T)
        assert torch.allclose(vs, vt[0] @ vt[0].T + vt[1] @ vt[1].T, atol=1e-5)
        assert torch.allclose(vk, monarch.inspect(t, hosts=1, gpus=1) * 4)
        print("r on hosts=0,gpus=0:", vr)
        print("reduce over gpus:", vs)
        print("tensor seed example: ok")
    finally:
        procs.stop().get()


if __name__ == "__main__":
    main()
