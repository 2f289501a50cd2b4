"""A TLS client for tests/multihost/test_tls.py: ``python -m tests.multihost.tls_client GATEWAY AGENTS CA PRIVATE_KEY``.

Attaches with Monarch's ``ca`` / ``private_key`` (``PRIVATE_KEY`` ``-`` = none; ``CERT,KEY`` = a
pair), spawns 2 procs per host, calls them across hosts (client -> proc and proc -> proc), round
trips 16 MiB, prints one JSON object per line and exits.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time


def emit(**msg: object) -> None:
    print(json.dumps(msg), flush=True)


def main() -> None:
    gateway, agents, ca, key = sys.argv[1], sys.argv[2].split(","), sys.argv[3], sys.argv[4]
    import faulthandler

    faulthandler.dump_traceback_later(50.0, exit=True)  # a hung client says where, then ends
    from monarch.actor import attach_to_workers, enable_transport, shutdown_context

    from tests.multihost.mh_client import Where

    enable_transport(f"tcp://{gateway}:0")
    private_key: object = None if key == "-" else tuple(key.split(",")) if "," in key else key
    try:
        hm = attach_to_workers(workers=agents, ca=ca, private_key=private_key)
        hm.initialized.get(30.0)
    except Exception as exc:
        emit(event="error", error=f"{type(exc).__name__}: {exc}")
        return
    procs = hm.spawn_procs(per_host={"gpus": 2})
    mesh = procs.spawn("where", Where)
    found = mesh.where.call().get(60.0)
    emit(
        event="where",
        points=[v for _, v in found.items()],
        tls_env={k: v for k, v in os.environ.items() if k.startswith("MONARCH_TLS_")},
    )
    relayed = mesh.slice(hosts=0, gpus=0).relay.call_one(mesh.slice(hosts=1)).get(30.0)
    times = []
    one = mesh.slice(hosts=1, gpus=0)
    for _ in range(100):
        t = time.perf_counter()
        one.where.call_one().get(10.0)
        times.append(time.perf_counter() - t)
    blob = os.urandom(16 << 20)
    t = time.perf_counter()
    back = mesh.slice(hosts=1, gpus=1).echo.call_one(blob).get(60.0)
    mib_s = 16 / (time.perf_counter() - t)
    from monarch._mesh import current

    transport = current.installed().router.transport  # type: ignore[union-attr]  # attached above
    kinds = sorted(
        {type(link).__name__ for link in transport._links if str(link.peer).startswith("tcp:")}
    )
    emit(
        event="done",
        tcp_link_kinds=kinds,
        relayed=relayed,
        echo_ok=back == blob,
        call_one_ms=statistics.median(times) * 1e3,
        echo_mib_s=mib_s,
    )
    shutdown_context().get(30.0)


if __name__ == "__main__":
    main()
