"""Actors for the feature tests of tests/runtime (importable by procs)."""

from __future__ import annotations

import asyncio

from monarch.actor import Actor, Port, concurrent_endpoint, endpoint


class Latch(Actor):
    """``hold`` runs as a task until ``open_when_held`` sees it started and lets it finish."""

    def __init__(self, log_path: str) -> None:
        self.log_path = log_path
        self.held = asyncio.Event()
        self.opened = asyncio.Event()
        self.starts: list[int] = []

    def _log(self, line: str) -> None:
        with open(self.log_path, "a") as f:
            f.write(line + "\n")

    @concurrent_endpoint
    async def hold(self, tag: int) -> int:
        self.starts.append(tag)
        self.held.set()
        await self.opened.wait()
        return tag

    @endpoint
    async def open_when_held(self) -> str:
        await self.held.wait()
        self.opened.set()
        return "opened"

    @endpoint
    async def start_order(self) -> list[int]:
        return list(self.starts)

    @concurrent_endpoint(explicit_response_port=True)
    async def forever(self, port: Port[str]) -> None:
        port.send("running")
        try:
            await asyncio.Event().wait()
        finally:
            self._log("body cancelled")

    @concurrent_endpoint
    async def fails(self) -> None:
        raise ValueError("concurrent failure")

    @concurrent_endpoint(explicit_response_port=True)
    async def fails_on_port(self, port: Port[None]) -> None:
        raise ValueError("escaped the port")

    @endpoint
    async def ping(self) -> str:
        return "pong"

    async def __cleanup__(self, exc: BaseException | None) -> None:
        self._log("cleanup")


class Registry(Actor):
    """A controller: counts how many times it was constructed in its process."""

    constructions = 0

    def __init__(self) -> None:
        type(self).constructions += 1
        self.items: dict[str, int] = {}

    @endpoint
    async def where(self) -> tuple[int, int, int]:
        import os

        return os.getpid(), id(self), type(self).constructions

    @endpoint
    async def put(self, key: str, value: int) -> None:
        self.items[key] = value

    @endpoint
    async def get(self, key: str) -> int:
        return self.items[key]


class RegistryUser(Actor):
    """Finds the ``registry`` controller from inside a proc."""

    @endpoint
    def lookup(self, key: str) -> int:
        from monarch.actor import get_or_spawn_controller

        reg = get_or_spawn_controller("registry", Registry).get(30)
        return reg.get.call_one(key).get(30)  # type: ignore[no-any-return]


class Nester(Actor):
    """Returns lists nested ``depth`` levels deep."""

    @endpoint
    def nested(self, depth: int) -> list[object]:
        out: list[object] = []
        for _ in range(depth):
            out = [out]
        return out


class Crasher(Actor):
    """Fails (ends its actor) when ``crash`` is broadcast."""

    @endpoint
    async def crash(self) -> None:
        raise RuntimeError("crashed on purpose")

    @endpoint
    async def ok(self) -> str:
        return "ok"


class Owner(Actor):
    """Owns a ``Crasher`` mesh; ``handled`` says what ``__supervise__`` returns."""

    def __init__(self, handled: bool) -> None:
        from monarch.actor import this_host

        self.handled = handled
        self.child = this_host().spawn_procs(per_host={"gpus": 1}).spawn("crasher", Crasher)
        self.seen = asyncio.Event()
        self.failures: list[str] = []

    @endpoint
    async def crash_child_and_wait(self) -> list[str]:
        await self.child.ok.call()
        self.child.crash.broadcast()
        # only __supervise__ sets this: it must run while this handler is suspended
        await asyncio.wait_for(self.seen.wait(), timeout=30)
        return list(self.failures)

    @endpoint
    async def crash_child_and_hang(self) -> None:
        await self.child.ok.call()
        self.child.crash.broadcast()
        await asyncio.Event().wait()

    def __supervise__(self, failure: object) -> bool:
        self.failures.append(getattr(failure, "mesh_name", "?"))
        self.seen.set()
        return self.handled


class Finalized(Actor):
    """Writes to ``path`` from ``__del__`` and from an ``atexit`` handler of its proc."""

    def __init__(self, path: str) -> None:
        import atexit

        self.path = path
        atexit.register(self._note, "atexit")

    def _note(self, what: str) -> None:
        with open(self.path, "a") as f:
            f.write(what + "\n")

    def __del__(self) -> None:
        self._note("del")

    @endpoint
    def ready(self) -> bool:
        return True


class StashesAGlobal(Actor):
    """Keeps an object with a ``__del__`` in a module global (alive until the proc ends)."""

    def __init__(self, path: str) -> None:
        from tests.runtime import finalizer_globals

        finalizer_globals.stash(path)

    @endpoint
    def ready(self) -> bool:
        return True


class Fetcher(Actor):
    """Awaits the futures of a ``stream()`` from inside an async endpoint."""

    @endpoint
    async def fetch(self, mesh: object) -> list[int]:
        return sorted([await f for f in mesh.rank.stream()])  # type: ignore[attr-defined]


class Ranked(Actor):
    @endpoint
    async def rank(self) -> int:
        from monarch.actor import current_rank

        return current_rank().rank
