"""A client script for tests/tools/test_debug_remote.py: it listens on TCP (as a client of host
agents does) and spawns 2 procs that see the client's debug controller as a rank of another
machine would: the Unix socket path they are given does not exist where they run, so their
breakpoints must reach the controller over the network address. Rank 1 pauses."""

import sys

from monarch._mesh import current
from monarch.actor import Actor, context, enable_transport, endpoint, this_host


class Far(Actor):
    @endpoint
    def work(self, n: int) -> int:
        w = n * 7
        if context().actor_instance.rank.rank == 1:
            breakpoint()
        w = w + 1
        return w


def main() -> int:
    enable_transport("tcp://127.0.0.1:0")
    rt = current.current_runtime()
    value = rt.procs.child_env["MONARCH_DEBUG_CONTROLLER"]
    network = value.rpartition(",")[2]
    print("CONTROLLER", network, flush=True)
    if not network.startswith(("tcp:127.0.0.1:", "tls:127.0.0.1:")):
        return 3
    far = "unix:/nonexistent-monarch-host/controller.sock," + network
    procs = this_host().spawn_procs(per_host={"gpus": 2}, env={"MONARCH_DEBUG_CONTROLLER": far})
    try:
        print(
            "RESULTS",
            sorted(procs.spawn("far", Far).work.call(3).get(timeout=600).values()),
            flush=True,
        )
    finally:
        procs.stop().get(60)
    return 0


if __name__ == "__main__":
    sys.exit(main())
