"""Producer/consumer over a channel (plain Python actor API).

``Channel.open()`` gives a ``(Port, PortReceiver)`` pair whose receiver lives in the process
that opened it. The port is an ordinary value: it is sent to producer actors on other procs,
which ``send`` into it as they produce; the client consumes with ``PortReceiver.recv()``
(a future per value). Values from one producer arrive in the order it sent them.

Run: ``python examples/channels.py``.
"""

from __future__ import annotations

import sys

from monarch.actor import Actor, Channel, Port, context, endpoint, this_host

ITEMS = 20
DONE = "done"


class Producer(Actor):
    """Sends ``ITEMS`` records, then a ``done`` marker, into a port it is given."""

    @endpoint
    def produce(self, port: Port[tuple[int, int | str]]) -> int:
        rank = context().actor_instance.rank.rank
        for i in range(ITEMS):
            port.send((rank, i * i))
        port.send((rank, DONE))
        return ITEMS


def main() -> int:
    procs = this_host().spawn_procs(per_host={"gpus": 3})
    try:
        producers = procs.spawn("producers", Producer)
        port, receiver = Channel[tuple[int, int | str]].open()
        producers.produce.broadcast(port)
        received: dict[int, list[int]] = {0: [], 1: [], 2: []}
        finished = 0
        while finished < len(received):
            rank, value = receiver.recv().get(timeout=30)
            if value == DONE:
                finished += 1
            else:
                assert isinstance(value, int)
                received[rank].append(value)
    finally:
        procs.stop().get(30)
    for rank, values in received.items():
        print(f"from producer {rank}: {len(values)} values, first {values[:4]}")
    ok = all(values == [i * i for i in range(ITEMS)] for values in received.values())
    print(
        f"channels: {sum(map(len, received.values()))} values from {len(received)} producers in order {'ok' if ok else 'FAILED'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
