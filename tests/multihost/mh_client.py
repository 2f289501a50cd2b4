"""A client process for the host-agent tests: ``python -m tests.multihost.mh_client MODE GATEWAY AGENTS``.

Runs in the root namespace (the bridge's address is its own), attaches to the agents, prints one
JSON object per line on stdout for the test to read, and waits on stdin where the test must act
(kill a host). Modes: ``scenario`` (calls, 16 MiB round trip, then a host is killed), ``hold``
(spawn procs, report them, wait to be killed).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time

from monarch.actor import Actor, SupervisionError, attach_to_workers, enable_transport, endpoint


class Where(Actor):
    @endpoint
    def where(self) -> dict:
        import socket

        from monarch.actor import context

        return {
            "hostname": socket.gethostname(),
            "pid": os.getpid(),
            "addr": context().actor_instance.proc_addr,
        }

    @endpoint
    def relay(self, others: Where) -> list[str]:
        """Call ``others`` from this proc: proc-to-proc traffic across hosts."""
        return [v["hostname"] for _, v in others.where.call().get(30.0).items()]

    @endpoint
    def echo(self, data: bytes) -> bytes:
        return data

    @endpoint
    def sleep(self, seconds: float) -> float:
        time.sleep(seconds)
        return seconds


def emit(**msg: object) -> None:
    print(json.dumps(msg), flush=True)


def main() -> None:
    mode, gateway, agents = sys.argv[1], sys.argv[2], sys.argv[3].split(",")
    import faulthandler

    def phase(budget_s: float = 60.0) -> None:
        """Re-arm the watchdog for the next phase: a hung client says where, then ends."""
        faulthandler.dump_traceback_later(budget_s, exit=True)

    phase()
    import monarch.actor

    failures: list[str] = []
    monarch.actor.unhandled_fault_hook = lambda failure: failures.append(str(failure))
    enable_transport(f"tcp://{gateway}:0")
    if mode == "hold":  # the agents are listed in MONARCH_HOSTS
        from monarch.actor import hosts_from_config

        hm = hosts_from_config("MONARCH_HOSTS")
    else:
        hm = attach_to_workers(workers=agents, ca=None)
    hm.initialized.get(30.0)
    procs = hm.spawn_procs(per_host={"gpus": 2})
    from tests.multihost.mh_client import Where as ByName  # pickled by reference, not as __main__'s

    mesh = procs.spawn("where", ByName)
    started = time.monotonic()
    found = mesh.where.call().get(60.0)
    first_s = time.monotonic() - started
    emit(event="where", points=[v for _, v in found.items()], first_s=first_s)
    phase()
    if mode == "hold":
        faulthandler.cancel_dump_traceback_later()
        sys.stdin.readline()
        return
    relayed = mesh.slice(hosts=0, gpus=0).relay.call_one(mesh.slice(hosts=1)).get(30.0)
    broadcast_seen = mesh.echo.call(b"x").get(30.0)
    emit(event="relayed", from_h0=relayed, call_all=len(list(broadcast_seen.items())))
    phase()
    one = mesh.slice(hosts=1, gpus=0)
    times = []
    for _ in range(200):
        t = time.perf_counter()
        one.where.call_one().get(10.0)
        times.append(time.perf_counter() - t)
    blob = os.urandom(16 << 20)
    t = time.perf_counter()
    back = mesh.slice(hosts=1, gpus=1).echo.call_one(blob).get(60.0)
    mib_s = 16 / (time.perf_counter() - t)
    emit(
        event="measured",
        call_one_ms=statistics.median(times) * 1e3,
        echo_ok=back == blob,
        echo_mib_s=mib_s,
    )
    in_flight = mesh.slice(hosts=0, gpus=1).sleep.call_one(30.0)
    faulthandler.cancel_dump_traceback_later()  # the test kills the host now; it bounds its own wait
    emit(event="kill_host0")
    killed_at = float(sys.stdin.readline())
    phase(40.0)
    try:
        in_flight.get(20.0)
        emit(event="error", error="the in-flight call to the killed host returned")
        return
    except SupervisionError as exc:
        in_flight_s = time.monotonic() - killed_at
        in_flight_err = str(exc)
    try:
        mesh.slice(hosts=0, gpus=0).where.call_one().get(10.0)
        later_err = ""
    except SupervisionError as exc:
        later_err = str(exc)
    survivors = mesh.slice(hosts=1).where.call().get(20.0)
    emit(
        event="after_kill",
        in_flight_s=in_flight_s,
        in_flight_error=in_flight_err,
        later_error=later_err,
        survivors=[v["hostname"] for _, v in survivors.items()],
        failures=len(failures),
    )


if __name__ == "__main__":
    main()
