"""A client script for tests/tools/test_debug_remote.py: it listens on TCP (as a client of host
agents does) and spawns 2 procs that see the client's debug controller as a rank of another
machine would: the Unix socket path they are given does not exist where they run, so their
breakpoints must reach the controller over the network address. Rank 1 pauses.

``client.py``: procs of this machine, the client on 127.0.0.1. ``client.py GATEWAY AGENT``: the
client on GATEWAY, its procs under the host agent at AGENT (a namespace host)."""

import sys

from monarch._mesh import current
from monarch.actor import (
    Actor,
    attach_to_workers,
    context,
    enable_transport,
    endpoint,
    this_host,
)


class Far(Actor):
    @endpoint
    def work(self, n: int) -> int:
        w = n * 7
        if context().actor_instance.rank.rank == 1:
            breakpoint()
        w = w + 1
        return w


def main() -> int:
    gateway, agent = sys.argv[1:3] if len(sys.argv) == 3 else ("127.0.0.1", None)
    enable_transport(f"tcp://{gateway}:0")
    rt = current.current_runtime()
    network = rt.procs.child_env["MONARCH_DEBUG_CONTROLLER"].rpartition(",")[2]
    print("CONTROLLER", network, flush=True)
    if not network.startswith((f"tcp:{gateway}:", f"tls:{gateway}:")):
        return 3
    far = {"MONARCH_DEBUG_CONTROLLER": "unix:/nonexistent-monarch-host/controller.sock," + network}
    if agent is None:
        procs = this_host().spawn_procs(per_host={"gpus": 2}, env=far)
    else:
        hosts = attach_to_workers(workers=[agent])
        hosts.initialized.get(60.0)
        procs = hosts.spawn_procs(per_host={"gpus": 2}, env=far)
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
