"""A client for the RDMA-between-hosts tests: ``python -m tests.multihost.rdma_client GATEWAY AGENTS SIZES``.

Runs in the root namespace, attaches to two agents (namespace hosts h0 and h1) and spawns two
procs per host: an :class:`Owner` of an ``RDMABuffer`` on h0, a :class:`Reader` next to it on h0
and one on h1. First the reader on h0 reads and writes a ``SIZES[0]`` buffer (one JSON line: the
same host, so ``cma``). Then, for each size in ``SIZES`` (bytes, comma separated), the reader on
h1 reads the owner's buffer and checks it byte for byte, then writes another pattern that the
owner checks byte for byte; one JSON line per size. Then it makes a ``KILL_SIZE`` buffer, prints
``{"event": "kill", ...}`` with the owner's RDMA server port, waits for a line on stdin, starts a
read of it from h1, prints ``{"event": "reading"}``, reads one more line on stdin (the test has
SIGKILLed h0 in the middle of that read) and prints how the read ended.
"""

from __future__ import annotations

import faulthandler
import json
import sys
import time

from monarch.actor import Actor, endpoint

#: The buffer read while the owner's host is killed (the test slows h0's link so it takes seconds).
KILL_SIZE = 64 << 20


def pattern(size: int, salt: int) -> bytes:
    """``size`` bytes that differ per ``salt`` and per offset (a 4016-byte block repeated)."""
    block = bytes((i * 7 + salt) % 251 for i in range(4016))
    return (block * (size // len(block) + 1))[:size]


class Owner(Actor):
    """Owns one registered buffer at a time (on h0)."""

    def __init__(self) -> None:
        self.mem = bytearray()
        self.buf = None

    @endpoint
    def make(self, size: int, salt: int):
        from monarch.rdma import RDMABuffer

        self.mem = bytearray(pattern(size, salt))
        self.buf = RDMABuffer(memoryview(self.mem))
        return self.buf

    @endpoint
    def matches(self, salt: int) -> bool:
        return bytes(self.mem) == pattern(len(self.mem), salt)

    @endpoint
    def server(self) -> dict:
        """Where this proc's RDMA server listens (the descriptor of the current buffer)."""
        import socket

        desc = self.buf._desc
        return {"tcp_host": desc.tcp_host, "tcp_port": desc.tcp_port, "host": socket.gethostname()}


class Reader(Actor):
    """Reads and writes the owner's buffer from the other host (h1)."""

    @endpoint
    def pull(self, buf, salt: int) -> dict:
        import socket

        dst = bytearray(buf.size)
        backend = buf.backend
        t = time.monotonic()
        buf.read_into(memoryview(dst), timeout=60).get(timeout=90)
        read_s = time.monotonic() - t
        return {
            "backend": backend,
            "host": socket.gethostname(),
            "ok": bytes(dst) == pattern(buf.size, salt),
            "read_s": read_s,
        }

    @endpoint
    def push(self, buf, salt: int) -> None:
        buf.write_from(memoryview(pattern(buf.size, salt)), timeout=60).get(timeout=90)

    @endpoint
    def pull_error(self, buf) -> dict:
        """Read ``buf``; say how the read ended (the owner's host dies during it)."""
        dst = bytearray(buf.size)
        t = time.monotonic()
        try:
            buf.read_into(memoryview(dst), timeout=60).get(timeout=90)
        except Exception as exc:
            return {"error": f"{type(exc).__name__}: {exc}", "after_s": time.monotonic() - t}
        return {"error": "", "after_s": time.monotonic() - t}


def emit(**msg: object) -> None:
    print(json.dumps(msg), flush=True)


def main() -> None:
    gateway, agents = sys.argv[1], sys.argv[2].split(",")
    sizes = [int(s) for s in sys.argv[3].split(",")]
    faulthandler.dump_traceback_later(120.0, exit=True)  # a hung client says where, then ends
    import monarch.actor
    from monarch.actor import attach_to_workers, enable_transport

    from tests.multihost.rdma_client import Owner as OwnerByName
    from tests.multihost.rdma_client import Reader as ReaderByName

    failures: list[str] = []  # the owner's mesh fails when h0 dies: reported, not fatal
    monarch.actor.unhandled_fault_hook = lambda failure: failures.append(str(failure))
    enable_transport(f"tcp://{gateway}:0")
    hm = attach_to_workers(workers=agents, ca=None)
    hm.initialized.get(30.0)
    procs = hm.spawn_procs(per_host={"gpus": 2})
    owner = procs.slice(hosts=0, gpus=0).spawn("owner", OwnerByName)
    neighbour = procs.slice(hosts=0, gpus=1).spawn("neighbour", ReaderByName)
    reader = procs.slice(hosts=1, gpus=0).spawn("reader", ReaderByName)
    buf = owner.make.call_one(sizes[0], 50).get(60.0)
    pulled = neighbour.pull.call_one(buf, 50).get(120.0)
    neighbour.push.call_one(buf, 51).get(120.0)
    emit(event="same_host", pulled=pulled, written_ok=owner.matches.call_one(51).get(60.0))
    for i, size in enumerate(sizes):
        buf = owner.make.call_one(size, i).get(60.0)
        pulled = reader.pull.call_one(buf, i).get(120.0)
        reader.push.call_one(buf, i + 100).get(120.0)
        written = owner.matches.call_one(i + 100).get(60.0)
        where = owner.server.call_one().get(30.0)
        emit(event="size", size=size, pulled=pulled, written_ok=written, owner=where)
    buf = owner.make.call_one(KILL_SIZE, 7).get(60.0)
    where = owner.server.call_one().get(30.0)
    faulthandler.cancel_dump_traceback_later()  # the test kills h0 now; it bounds its own wait
    emit(event="kill", owner=where)
    sys.stdin.readline()  # the test is ready to watch the read
    faulthandler.dump_traceback_later(120.0, exit=True)
    fut = reader.pull_error.call_one(buf)
    emit(event="reading")
    sys.stdin.readline()  # the test has killed h0 in the middle of the read
    t = time.monotonic()
    ended = fut.get(100.0)
    emit(event="read_ended", result=ended, waited_s=time.monotonic() - t, failures=failures)


if __name__ == "__main__":
    main()
