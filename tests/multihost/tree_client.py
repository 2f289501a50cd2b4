"""A client for the cast-tree test: ``python -m tests.multihost.tree_client GATEWAY AGENTS PER_HOST``.

Attaches to the agents (one per namespace host), spawns ``PER_HOST`` procs per host, and counts
the call frames the client sends and the reply frames it receives for a broadcast and a
``call()`` over the whole mesh, checks per-sender FIFO between
those tree casts and direct ``call_one`` s, streams through the tree while a non-head proc is
SIGKILLed, then prints one JSON object and exits.
"""

from __future__ import annotations

import faulthandler
import json
import sys
from typing import Any


def main() -> None:
    gateway, agents, per_host = sys.argv[1], sys.argv[2].split(","), int(sys.argv[3])
    faulthandler.dump_traceback_later(60.0, exit=True)  # a hung client says where, then ends
    from monarch._mesh import current
    from monarch._transport.messages import Kind
    from monarch.actor import attach_to_workers, enable_transport, shutdown_context

    from tests.runtime.actors import Counter

    enable_transport(f"tcp://{gateway}:0")
    hm = attach_to_workers(workers=agents, ca=None)
    hm.initialized.get(30.0)
    procs = hm.spawn_procs(per_host={"gpus": per_host})
    mesh = procs.spawn("counters", Counter)
    mesh.initialized.get(60.0)
    rt = current.installed()
    assert rt is not None
    router = rt.router
    calls_to: list[str] = []
    replies: list[int] = []
    orig_send, orig_dispatch = router.send, router._dispatch

    def counting_send(addr: str, msg: Any, bufs: list[Any], **kw: Any) -> None:
        base = getattr(msg, "base", msg)  # a direct send's TemplateMessage, or an envelope
        if getattr(base, "kind", None) == Kind.CALL:
            calls_to.append(addr)
        orig_send(addr, msg, bufs, **kw)

    def counting_dispatch(env: Any, bufs: list[memoryview]) -> None:
        if env.kind == Kind.REPLY:
            replies.append(len(env.parts))
        orig_dispatch(env, bufs)

    router.send = counting_send  # type: ignore[method-assign]  # counted for this test only
    router._dispatch = counting_dispatch  # type: ignore[method-assign]
    mesh.incr.broadcast(1)
    broadcast_to = list(calls_to)
    calls_to.clear()
    values = mesh.value.call().get(30.0)
    call_to = list(calls_to)
    call_replies = list(replies)
    router.send, router._dispatch = orig_send, orig_dispatch  # type: ignore[method-assign]
    # FIFO per sender across the two paths: a broadcast (down the tree, through each host's head)
    # then a direct call_one to a proc that the broadcast reached through its head
    fifo_ok = True
    for i in range(2, 22):
        mesh.incr.broadcast(1)
        seen = mesh.slice(hosts=i % 3, gpus=1).value.call_one().get(30.0)
        fifo_ok = fifo_ok and seen == i
    final = list(mesh.value.call().get(30.0).values())
    # a stream through the tree (its parts are not reduced: each proc answers itself) whose
    # non-head proc on host 1 dies meanwhile: that position fails, the others arrive, no hang
    import os
    import signal
    import time

    import monarch.actor
    from monarch.actor import SupervisionError

    from tests.multihost.mh_client import Where

    failures: list[str] = []  # the victim's MeshFailures: expected here, not fatal to the client
    monarch.actor.unhandled_fault_hook = lambda failure: failures.append(str(failure))
    where = procs.spawn("where", Where)
    victim = where.slice(hosts=1, gpus=1).where.call_one().get(30.0)["pid"]
    started = time.monotonic()
    stream = where.sleep.stream(2.0)
    os.kill(victim, signal.SIGKILL)
    stream_values, stream_errors = 0, []
    for fut in stream:
        try:
            fut.get(20.0)
            stream_values += 1
        except SupervisionError as exc:
            stream_errors.append(str(exc))
    stream_s = time.monotonic() - started
    print(
        json.dumps(
            {
                "broadcast_to": broadcast_to,
                "call_to": call_to,
                "call_replies": call_replies,
                "values": list(values.values()),
                "fifo_ok": fifo_ok,
                "final": final,
                "stream_values": stream_values,
                "stream_errors": stream_errors,
                "stream_s": stream_s,
            }
        ),
        flush=True,
    )
    shutdown_context().get(30.0)


if __name__ == "__main__":
    main()
