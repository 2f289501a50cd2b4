"""A client for the forwarder-loss test: ``python -m tests.multihost.tree_fault_client GATEWAY AGENTS``.

Attaches to the agents (one per namespace host, more than FANOUT of them), spawns one proc per
host and a ``Counter`` mesh over them, checks that host 0 forwards casts to host 1 (the cast
tree of heads), records 0 and 1 on every rank, then prints ``{"event": "act", ...}`` and waits
on stdin until the test has frozen or cut host 0. It then sends, into the broken forwarder, two
broadcasts (``record(2)``, ``record(3)``), a ``call()`` (``record(4)``) and a ``stream()``
(``record(5)``), prints ``{"event": "sent"}``, and reads the monotonic time at which the test
lost host 0 (SIGKILLed it, or cut its link). It measures when the in-flight ``call()`` failed
and when each stream position answered or failed, checks that later casts to the healthy slice
reach every healthy rank and what each rank recorded, prints one JSON object and exits.
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
    faulthandler.dump_traceback_later(120.0, exit=True)  # a hung client says where, then ends
    import monarch.actor
    from monarch._mesh import actor_mesh, current
    from monarch._mesh.cast_ledger import ledger_for
    from monarch.actor import SupervisionError, attach_to_workers, enable_transport

    from tests.runtime.actors import Counter

    failures: list[str] = []  # host 0's MeshFailures: expected here, not fatal to the client
    monarch.actor.unhandled_fault_hook = lambda failure: failures.append(str(failure))
    enable_transport(f"tcp://{gateway}:0")
    hm = attach_to_workers(workers=agents, ca=None)
    hm.initialized.get(60.0)
    n = len(agents)
    procs = hm.spawn_procs(per_host={"gpus": 1})
    mesh = procs.spawn("counters", Counter)
    addrs = list(mesh._ref.addrs)  # by rank: rank i is host i's proc
    rt = current.installed()
    assert rt is not None
    router = rt.router
    tree = actor_mesh._cast_tree([(a, [r]) for r, a in enumerate(addrs)])
    below0 = [addrs.index(c) for c, _rs, _sub in tree[0][2]]
    for i in (0, 1):
        mesh.record.broadcast(i)
    before = list(mesh.history.call().get(60.0).values())
    deadline = time.monotonic() + 30.0  # every proc has beaten: from then on silence is a fault
    while not all(router.heartbeats.has_beaten(a) for a in addrs):
        if time.monotonic() > deadline:
            emit(event="error", error="a proc sent no heartbeat within 30 s")
            return
        time.sleep(0.02)  # poll interval of a bounded wait on the router's record
    faulthandler.cancel_dump_traceback_later()  # the test breaks host 0 now; it bounds its waits
    emit(event="act", top=[addrs.index(a) for a, _rs, _sub in tree], below0=below0, before=before)
    sys.stdin.readline()  # host 0 is frozen or cut: what is sent now stays inside it
    faulthandler.dump_traceback_later(120.0, exit=True)
    mesh.record.broadcast(2)
    mesh.record.broadcast(3)
    call = mesh.record.call(4)
    stream = mesh.record.stream(5)
    emit(event="sent")
    lost_at = float(sys.stdin.readline())
    call_error, call_s = "", -1.0
    try:
        call.get(60.0)
    except SupervisionError as exc:
        call_error, call_s = str(exc), time.monotonic() - lost_at
    stream_values: list[float] = []
    stream_errors: list[str] = []
    for fut in stream:
        try:
            fut.get(60.0)
            stream_values.append(time.monotonic() - lost_at)
        except SupervisionError as exc:
            stream_errors.append(str(exc))
    t = time.monotonic()
    try:
        mesh.value.call().get(10.0)
        whole_error = ""
    except SupervisionError as exc:
        whole_error = str(exc)
    whole_s = time.monotonic() - t
    healthy = mesh.slice(hosts=slice(1, n))
    t = time.monotonic()
    healthy.record.broadcast(6)
    after = list(healthy.history.call().get(30.0).values())
    after_s = time.monotonic() - t
    streamed_after = sum(1 for fut in healthy.value.stream() if fut.get(30.0) is not None)
    resent = ledger_for(router).resent
    t = time.monotonic()
    hm.shutdown().get(60.0)
    shutdown_s = time.monotonic() - t
    emit(
        event="after",
        call_error=call_error,
        call_s=call_s,
        stream_values_s=stream_values,
        stream_errors=stream_errors,
        whole_error=whole_error,
        whole_s=whole_s,
        after=after,
        after_s=after_s,
        streamed_after=streamed_after,
        resent=resent,
        failures=failures,
        shutdown_s=shutdown_s,
    )
    faulthandler.dump_traceback_later(5.0, exit=False)  # a slow exit says where it waits


if __name__ == "__main__":
    main()
