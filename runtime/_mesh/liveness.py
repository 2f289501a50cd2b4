"""Heartbeats of watched children: when each last beat, and which one is hung.

A proc's parent watches it (:meth:`~monarch._mesh.router.Router.watch`): the child must send a
heartbeat control message every ``peer_timeout_s / 4``. :class:`Heartbeats` keeps the time of each
child's last beat and checks them on the loop every quarter of the bound; a child whose beats are
late is declared hung according to what the OS says of it (stopped, frozen, or silent with no OS
view), and the router then marks it dead (the one source of truth for liveness stays the router).
Everything here runs on the loop thread.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

__all__ = ["Heartbeats"]

log = logging.getLogger("monarch.router")


class Heartbeats:
    """The children that must send heartbeats, and the check that declares one hung.

    Args:
        loop: the process's event loop (the checks are scheduled on it).
        peer_timeout_s: a beating child silent this long, when stopped or with no OS view, is
            hung; None disables the check.
        start_timeout_s: the same bound for a child that has not beaten since it was started.
        frozen_timeout_s: a child the OS says is running but that is silent this long is hung.
        is_dead: whether a peer is already declared dead (it is no longer watched).
        hung: ``hung(addr, reason)`` when a watched child is declared hung (loop thread).
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        *,
        peer_timeout_s: float | None,
        start_timeout_s: float,
        frozen_timeout_s: float,
        is_dead: Callable[[str], bool],
        hung: Callable[[str, str], None],
    ) -> None:
        self.loop = loop
        self.peer_timeout_s = peer_timeout_s
        self.start_timeout_s = start_timeout_s
        self.frozen_timeout_s = frozen_timeout_s
        self._is_dead = is_dead
        self._hung = hung
        # child address -> (monotonic time of its last heartbeat or start, has it beaten yet)
        self._watched: dict[str, tuple[float, bool]] = {}
        self._probes: dict[str, Callable[[], str | None] | None] = {}
        self._last_check = 0.0
        self._closed = False

    def __repr__(self) -> str:
        return f"<Heartbeats watched={len(self._watched)} peer_timeout_s={self.peer_timeout_s}>"

    def __contains__(self, addr: str) -> bool:
        return addr in self._watched

    def has_beaten(self, addr: str) -> bool:
        """Whether the watched child at ``addr`` has sent a heartbeat since it was started."""
        return self._watched.get(addr, (0.0, False))[1]

    def watch(self, addr: str, probe: Callable[[], str | None] | None) -> None:
        """Watch the child at ``addr`` (see :meth:`~monarch._mesh.router.Router.watch`)."""
        first = not self._watched
        self._watched[addr] = (time.monotonic(), False)
        self._probes[addr] = probe
        if first and self.peer_timeout_s is not None:
            self._last_check = time.monotonic()
            self.loop.call_later(self.peer_timeout_s / 4, self._check)

    def beat(self, env: Any, bufs: list[memoryview]) -> None:
        """The router's handler of a heartbeat control envelope."""
        if env.origin in self._watched:
            self._watched[env.origin] = (time.monotonic(), True)

    def forget(self, addr: str) -> None:
        """Stop watching ``addr`` (it was declared dead)."""
        self._watched.pop(addr, None)
        self._probes.pop(addr, None)

    def close(self) -> None:
        """No more checks (the router is closing)."""
        self._closed = True

    def _check(self) -> None:
        timeout_s = self.peer_timeout_s
        if timeout_s is None or self._closed:
            return
        now = time.monotonic()
        interval = timeout_s / 4
        if now - self._last_check > 2 * interval + 0.5:
            # this loop itself was starved (busy handlers, a loaded machine): the beats it did
            # not read in time say nothing about the children; start their clocks again
            for addr, (_seen, beating) in list(self._watched.items()):
                self._watched[addr] = (now, beating)
        self._last_check = now
        for addr, (seen, beating) in list(self._watched.items()):
            if self._is_dead(addr):
                del self._watched[addr]
                self._probes.pop(addr, None)
                continue
            silent = now - seen
            limit = timeout_s if beating else max(timeout_s, self.start_timeout_s)
            if silent <= limit:
                continue
            probe = self._probes.get(addr)
            state = probe() if probe is not None else None
            if probe is not None and state is None:
                continue  # it is gone: its exit is being reported
            if probe is None or state in ("T", "t", "?"):  # "?": alive as far as its probe knows, no OS view
                what = "stopped" if state in ("T", "t") else "silent"
            elif silent > max(limit, self.frozen_timeout_s):
                what = f"frozen (state {state})"
            else:
                continue  # running, only slow: not hung
            del self._watched[addr]
            self._probes.pop(addr, None)
            beat = "heartbeat" if beating else "heartbeat since it was started"
            reason = f"hung: {what}, no {beat} for {silent:.1f} s (limit {limit} s)"
            log.error("proc at %s %s", addr, reason)
            self._hung(addr, reason)
        if self._watched:
            self.loop.call_later(interval, self._check)
