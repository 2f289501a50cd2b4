"""A client script for tests/tools/test_debug.py: a 4-proc mesh whose ranks 1 and 2 pause in a
sync endpoint and whose rank 3 of a second actor pauses in an async endpoint. The test copies it
into a temporary folder and runs it there; it deletes itself once started, so the procs cannot read
it and pdb's ``l`` must show the source the client kept."""

import os
import sys

from monarch.actor import Actor, context, endpoint, this_host


class Dbg(Actor):
    def __init__(self) -> None:
        self.x = 10 * context().actor_instance.rank.rank

    @endpoint
    def work(self, n: int) -> int:
        rank = context().actor_instance.rank.rank
        y = n + 1
        if rank in (1, 2):
            breakpoint()
        y = y * 2
        return y

    @endpoint
    def ping(self) -> int:
        return self.x

    @endpoint
    def explode(self, d: int) -> float:
        return 1 / d  # unhandled: with MONARCH_DEBUG_POST_MORTEM=1 the runtime opens post-mortem


class ADbg(Actor):
    @endpoint
    async def awork(self, n: int) -> int:
        z = n * 3
        if context().actor_instance.rank.rank == 3:
            breakpoint()
        return z


def main() -> int:
    procs = this_host().spawn_procs(per_host={"gpus": 4})
    os.unlink(__file__)
    if os.environ.get("DEBUG_TEST_POST_MORTEM") == "1":
        try:
            dbg = procs.spawn("dbg", Dbg)
            try:
                dbg.slice(gpus=2).explode.call_one(0).get(timeout=600)
            except Exception as exc:
                print("RAISED", type(exc).__name__, flush=True)
        finally:
            procs.stop().get(60)
        return 0
    try:
        dbg = procs.spawn("dbg", Dbg)
        adbg = procs.spawn("adbg", ADbg)
        work = dbg.work.call(5)
        awork = adbg.awork.call(7)
        # rank 0 answers while ranks 1 and 2 are paused
        print("PING0", dbg.slice(gpus=0).ping.call_one().get(timeout=60), flush=True)
        print("RESULTS", sorted(work.get(timeout=600).values()), flush=True)
        print("ARESULTS", sorted(awork.get(timeout=600).values()), flush=True)
    finally:
        procs.stop().get(60)
    return 0


if __name__ == "__main__":
    sys.exit(main())
