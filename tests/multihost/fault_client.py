"""A client for the partition and hang tests: ``python -m tests.multihost.fault_client GATEWAY AGENTS [BROKEN]``.

Runs in the root namespace, attaches to the agents, spawns 2 procs per host, starts a long call on
each proc of host 0 (on its first only with ``BROKEN`` = 1, then also checks its second answers), then prints ``{"event": "act", "points": [...]}`` and waits on stdin for the test to break
host 0 (cut its link, or SIGSTOP it) and send the monotonic time it did. It then measures when
the in-flight calls failed, that a later call to host 0 fails at once, that host 1 still
answers, how long ``HostMesh.shutdown()`` takes, and prints one JSON object; then it exits (the
test times the exit too). The liveness bound is ``MONARCH_PEER_TIMEOUT_S`` as the test sets it.
"""

from __future__ import annotations

import faulthandler
import json
import sys
import time


def emit(**msg: object) -> None:
    print(json.dumps(msg), flush=True)


def main() -> None:
    gateway, agents = sys.argv[1], sys.argv[2].split(",")
    broken = int(sys.argv[3]) if len(sys.argv) > 3 else 2  # how many of host 0's procs break
    faulthandler.dump_traceback_later(60.0, exit=True)  # a hung client says where, then ends
    import monarch.actor
    from monarch.actor import SupervisionError, attach_to_workers, enable_transport

    from tests.multihost.mh_client import Where

    failures: list[str] = []
    monarch.actor.unhandled_fault_hook = lambda failure: failures.append(str(failure))
    enable_transport(f"tcp://{gateway}:0")
    hm = attach_to_workers(workers=agents, ca=None)
    hm.initialized.get(30.0)
    procs = hm.spawn_procs(per_host={"gpus": 2})
    mesh = procs.spawn("where", Where)
    found = mesh.where.call().get(60.0)
    from monarch._mesh import current

    rt = current.installed()
    assert rt is not None
    # every proc has beaten once: from then on a silent one is hung at peer_timeout_s
    deadline = time.monotonic() + 30.0
    while not all(rt.router.heartbeats.has_beaten(v["addr"]) for _, v in found.items()):
        if time.monotonic() > deadline:
            emit(event="error", error="a proc sent no heartbeat within 30 s")
            return
        time.sleep(0.02)  # poll interval of a bounded wait on the router's record
    in_flight = [mesh.slice(hosts=0, gpus=g).sleep.call_one(60.0) for g in range(broken)]
    faulthandler.cancel_dump_traceback_later()  # the test breaks host 0 now; it bounds its own wait
    emit(event="act", points=[v for _, v in found.items()])  # one line: the test reads one per step
    broken_at = float(sys.stdin.readline())
    faulthandler.dump_traceback_later(60.0, exit=True)
    errors, failed_after = [], []
    for fut in in_flight:
        try:
            fut.get(30.0)
            emit(event="error", error="an in-flight call to the broken host returned")
            return
        except SupervisionError as exc:
            failed_after.append(time.monotonic() - broken_at)
            errors.append(str(exc))
    t = time.monotonic()
    try:
        mesh.slice(hosts=0, gpus=0).where.call_one().get(10.0)
        later_err = ""
    except SupervisionError as exc:
        later_err = str(exc)
    later_s = time.monotonic() - t
    h0_other = (
        mesh.slice(hosts=0, gpus=1).where.call_one().get(10.0)["hostname"] if broken < 2 else ""
    )
    t = time.monotonic()
    survivors = mesh.slice(hosts=1).where.call().get(20.0)
    survivors_s = time.monotonic() - t
    t = time.monotonic()
    hm.shutdown().get(60.0)
    shutdown_s = time.monotonic() - t
    emit(
        event="after",
        failed_after_s=failed_after,
        errors=errors,
        later_error=later_err,
        later_s=later_s,
        survivors=[v["hostname"] for _, v in survivors.items()],
        survivors_s=survivors_s,
        h0_other=h0_other,
        shutdown_s=shutdown_s,
        failures=failures,
    )
    # interpreter exit is timed (and bounded) by the test; a slow one says where it waits
    faulthandler.dump_traceback_later(2.5, exit=False)


if __name__ == "__main__":
    main()
