"""Explicit response ports answered from a background thread (plain Python actor API).

``@endpoint(explicit_response_port=True)`` gives the handler a ``Port`` instead of using its
return value: the handler returns at once (the actor is free for the next message) and the
answer is sent later with ``port.send(...)``, here from a worker ``threading.Thread``. The caller
sees an ordinary future. Slow requests sent first answer last: the replies complete out of order.

Run: ``python examples/explicit_response_port.py``.
"""

from __future__ import annotations

import sys
import threading
import time

from monarch.actor import Actor, Port, endpoint, this_host


class SlowSquarer(Actor):
    """Squares numbers after ``delay_s`` seconds, on a thread per request."""

    def __init__(self) -> None:
        self.threads: list[threading.Thread] = []

    @endpoint(explicit_response_port=True)
    def square(self, port: Port[tuple[int, str]], x: int, delay_s: float) -> None:
        def work() -> None:
            time.sleep(delay_s)
            port.send((x * x, threading.current_thread().name))

        t = threading.Thread(target=work, name=f"squarer-{x}", daemon=True)
        self.threads.append(t)
        t.start()

    @endpoint
    def ping(self) -> str:
        return "pong"


def main() -> int:
    procs = this_host().spawn_procs(per_host={"gpus": 1})
    try:
        squarer = procs.spawn("squarer", SlowSquarer)
        squarer.ping.call_one().get(timeout=60)  # the proc is up: time only the requests
        start = time.perf_counter()
        # 3 waits longest, 1 not at all: all three are in flight at once.
        futures = {x: squarer.square.call_one(x, 0.1 * x) for x in (3, 2, 1)}
        print(
            f"actor free while requests are pending: ping -> {squarer.ping.call_one().get(timeout=30)}"
        )
        order: list[int] = []
        pending = dict(futures)
        while pending:
            for x, fut in list(pending.items()):
                if fut.done():
                    order.append(x)
                    del pending[x]
            time.sleep(0.005)
        results = {x: f.get() for x, f in futures.items()}
        elapsed = time.perf_counter() - start
    finally:
        procs.stop().get(30)
    for x, (value, thread) in sorted(results.items()):
        print(f"square({x}) = {value}, sent from thread {thread}")
    ok = all(v == x * x for x, (v, _) in results.items()) and order == [1, 2, 3] and elapsed < 1.0
    print(
        f"explicit response port: completion order {order} in {elapsed:.2f} s {'ok' if ok else 'FAILED'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
