"""Actor classes used by the runtime tests (importable, so procs unpickle them by reference)."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

from monarch.actor import Actor, Port, context, endpoint


class Counter(Actor):
    def __init__(self, start: int = 0) -> None:
        self.value_ = start
        self.log: list[Any] = []

    @endpoint
    def incr(self, by: int = 1) -> None:
        self.value_ += by

    @endpoint
    def value(self) -> int:
        return self.value_

    @endpoint
    def record(self, item: Any) -> None:
        self.log.append(item)

    @endpoint
    def history(self) -> list[Any]:
        return list(self.log)

    @endpoint
    def where(self) -> tuple[int, int, dict[str, int], dict[str, int]]:
        c = context()
        return (c.actor_instance.rank.rank, c.message_rank.rank, dict(c.message_rank), dict(c.actor_instance.rank))

    @endpoint
    def boom(self, msg: str) -> int:
        raise ValueError(msg)

    @endpoint
    def echo(self, x: Any) -> Any:
        return x

    @endpoint
    def pid(self) -> int:
        import os

        return os.getpid()

    @endpoint
    def sleep(self, seconds: float) -> float:
        time.sleep(seconds)
        return seconds

    @endpoint
    def count_to(self, n: int) -> Any:
        yield from range(n)

    @endpoint(explicit_response_port=True)
    def later(self, port: Port[str], text: str) -> None:
        threading.Thread(target=lambda: (time.sleep(0.05), port.send(text.upper()))).start()


class Caller(Actor):
    """Calls another mesh from inside a sync endpoint (``.get()`` off the event loop)."""

    def __init__(self, other: Any) -> None:
        self.other = other

    @endpoint
    def ask(self) -> int:
        rank = context().actor_instance.rank
        return int(self.other.slice(**rank).value.call_one().get(timeout=10)) + 100


class AsyncWorker(Actor):
    def __init__(self) -> None:
        self.active = 0
        self.max_active = 0

    @endpoint
    async def work(self, seconds: float) -> int:
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        await asyncio.sleep(seconds)
        self.active -= 1
        return self.max_active

    @endpoint
    async def ticks(self, n: int) -> Any:
        for i in range(n):
            await asyncio.sleep(0)
            yield i


class Mixed(Actor):
    @endpoint
    def a(self) -> int:
        return 1

    @endpoint
    async def b(self) -> int:
        return 2


class Seq(Actor):
    def __init__(self) -> None:
        self.seen: dict[str, list[int]] = {}

    @endpoint
    def push(self, sender: str, i: int) -> None:
        self.seen.setdefault(sender, []).append(i)

    @endpoint
    def check(self, sender: str) -> tuple[int, bool]:
        got = self.seen.get(sender, [])
        return len(got), got == sorted(got) and len(set(got)) == len(got)


class Sender(Actor):
    def __init__(self, target: Any) -> None:
        self.target = target

    @endpoint
    def blast(self, n: int) -> tuple[int, bool]:
        me = context().actor_instance.actor_id
        for i in range(n):
            if i % 3 == 0:
                self.target.push.call_one(me, i)
            else:
                self.target.push.broadcast(me, i)
        # per-sender FIFO: this call is handled after every message above
        return self.target.check.call_one(me).get(timeout=30)


class PortSender(Actor):
    """Sends on a port it is given, then answers (ordering of an actor's messages to a caller)."""

    @endpoint
    def send_then_answer(self, port: Port[int], x: int) -> int:
        port.send(x)
        return x
