"""Casts sent through other hosts' heads, kept by their origin until they surely arrived.

Over more than ``FANOUT`` hosts a cast tree makes some hosts' head procs forward a cast to other
hosts' heads (see :mod:`monarch._mesh.actor_mesh`). When such a forwarder dies (its host is
SIGKILLed, partitioned or hung) the casts that were still inside it would never reach the
healthy hosts below it. The origin keeps, for every cross-host edge ``forwarder -> child`` of
the casts it sent recently, what it needs to send the child's part of the cast itself: when the
router declares the forwarder dead, the ledger re-sends that part straight to the child (the
entry point of the child's host), with the sequence number fixed at the origin. A child that had
got the cast from the forwarder already drops the copy (its number is behind the origin's
sequence there), so a cast is delivered at most once and in order; one that had not gets it now,
forwards it down its own subtree and answers as it would have.

Within one host nothing changes: a dead forwarder's local children are told to skip the numbers
that died with it (:data:`ControlOp.SKIP`, the router's record of ``forwarded`` numbers).

What is kept, and for how long: a ``broadcast`` for ``retain_s`` (by default twice the heartbeat
bound ``peer_timeout_s``: a forwarder that holds a cast and dies is declared dead within it), at
most ``max_records`` casts and ``max_bytes`` of payload (oldest first); a ``call()``/``stream()``
while its caller still awaits results. A cast that leaves the ledger is handed to the router's
skip record instead, so a forwarder dying later still leaves nobody waiting for it.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["CastLedger", "Edge", "fill_hops", "ledger_for"]

log = logging.getLogger("monarch.cast")

#: ``(forwarder, child, child's ranks, child's subtree)``: one cross-host edge of a cast tree;
#: a subtree is a list of ``(addr, ranks, subtree)``.
Edge = tuple[str, str, list[int], list[Any]]

_HANDLED_KEPT = 65536  # forwarders whose loss was handled, remembered for casts still being sent


def fill_hops(lst: Any, hops: Sequence[tuple[str, list[int], list[Any]]], seqs: dict[str, int]) -> None:
    """Write the cast tree ``hops`` into the envelope list ``lst`` (``Envelope.forward``)."""
    for i, (a, rs, sub) in enumerate(hops):
        h = lst[i]
        h.addr = a
        h.seq = seqs[a]
        h.ranks = rs
        if sub:
            fill_hops(h.init("forward", len(sub)), sub, seqs)


def _subtree_addrs(addr: str, sub: Sequence[tuple[str, list[int], list[Any]]]) -> list[str]:
    out = [addr]
    for a, _rs, s in sub:
        out.extend(_subtree_addrs(a, s))
    return out


class _Record:
    """One cast: its envelope without ranks and tree, buffers, sequence numbers, edges."""

    __slots__ = ("base", "bufs", "edges", "pending", "sent_at", "seqs", "size")

    def __init__(
        self, base: Any, bufs: list[Any], seqs: dict[str, int], edges: list[Edge], pending: Callable[[], bool] | None
    ) -> None:
        self.base = base
        self.bufs = bufs
        self.seqs = seqs
        self.edges = edges
        self.pending = pending
        self.sent_at = time.monotonic()
        self.size = len(base.payload) + sum(memoryview(b).nbytes for b in bufs)


class CastLedger:
    """The recent casts of one origin that crossed a host boundary through a forwarder.

    Args:
        router: the origin's router; the ledger registers for its peer-lost events.
        retain_s: how long a ``broadcast`` is kept (seconds).
        max_records: most casts kept (``call()``/``stream()`` still awaited are never dropped).
        max_bytes: most payload and buffer bytes kept, the same way.
    """

    def __init__(self, router: Any, *, retain_s: float, max_records: int = 4096, max_bytes: int = 256 << 20) -> None:
        self.router = router
        self.retain_s = retain_s
        self.max_records = max_records
        self.max_bytes = max_bytes
        self.resent = 0  # parts of casts re-sent to the child of a lost forwarder (for tests)
        self._lock = threading.Lock()
        self._records: list[_Record] = []
        self._bytes = 0
        self._by_fwd: dict[str, dict[_Record, list[Edge]]] = {}
        self._handled: dict[str, None] = {}
        self._last_prune = time.monotonic()
        self._timer = False
        router.on_peer_lost(self._peer_lost)

    def __repr__(self) -> str:
        return f"<CastLedger casts={len(self._records)} bytes={self._bytes} resent={self.resent}>"

    def add(self, base: Any, bufs: list[Any], seqs: dict[str, int], edges: list[Edge], pending: Callable[[], bool] | None) -> Any:
        """Keep a cast before it is sent (any thread); call :meth:`sent` once it was.

        Args:
            base: the cast's envelope with every shared field set (never modified afterwards).
            bufs: its out-of-band buffers.
            seqs: the sequence number fixed at the origin for every proc of the tree.
            edges: the cross-host edges of its tree.
            pending: whether its caller still awaits results; None for a broadcast.

        Returns:
            A handle for :meth:`sent`.
        """
        rec = _Record(base, list(bufs), seqs, edges, pending)
        with self._lock:
            self._records.append(rec)
            self._bytes += rec.size
            for edge in edges:
                self._by_fwd.setdefault(edge[0], {}).setdefault(rec, []).append(edge)
            now = time.monotonic()
            due = (
                now - self._last_prune >= 0.5
                or len(self._records) > self.max_records
                or self._bytes > self.max_bytes
            )
            start_timer = not self._timer
            self._timer = True
        if due:
            self.prune()
        if start_timer:
            self._schedule()
        return rec

    def sent(self, rec: Any) -> None:
        """The cast ``rec`` went out: re-send at once the parts whose forwarder was declared
        dead while it was being sent (its loss was handled before this cast was kept)."""
        todo: list[Edge] = []
        with self._lock:
            for fwd in {e[0] for e in rec.edges}:
                if fwd in self._handled:
                    todo.extend(self._by_fwd.get(fwd, {}).pop(rec, []))
        for edge in todo:
            self._resend(rec, edge)

    def _schedule(self) -> None:
        loop = self.router.loop
        try:
            loop.call_soon_threadsafe(loop.call_later, self.retain_s, self._tick)
        except RuntimeError:  # the loop is closed: the process is ending
            pass

    def _tick(self) -> None:
        self.prune()
        with self._lock:
            self._timer = bool(self._records)
        if self._timer:
            self._schedule()

    def prune(self) -> None:
        """Drop the casts that need not be kept any more (any thread), handing each one's
        forwarded numbers to the router's skip record."""
        now = time.monotonic()
        dropped: list[tuple[_Record, list[Edge]]] = []
        with self._lock:
            self._last_prune = now
            keep: list[_Record] = []
            n, size = len(self._records), self._bytes
            for rec in self._records:
                if rec.pending is not None:
                    drop = not rec.pending()
                else:
                    drop = now - rec.sent_at > self.retain_s or n > self.max_records or size > self.max_bytes
                if not drop:
                    keep.append(rec)
                    continue
                n -= 1
                size -= rec.size
                edges: list[Edge] = []
                for fwd in {e[0] for e in rec.edges}:
                    if self.router.dead_reason(fwd) is not None:
                        continue  # its loss is being handled: the re-send takes these
                    by = self._by_fwd.get(fwd)
                    if by is not None:
                        edges.extend(by.pop(rec, []))
                        if not by:
                            del self._by_fwd[fwd]
                dropped.append((rec, edges))
            self._records = keep
            self._bytes = size
        for rec, edges in dropped:
            for fwd, child, _ranks, sub in edges:
                for dest in _subtree_addrs(child, sub):
                    self.router.forwarded(fwd, dest, rec.seqs[dest])
                if self.router.dead_reason(fwd) is not None:
                    # declared dead meanwhile: its skip record may be gone already
                    self._resend(rec, (fwd, child, _ranks, sub))

    def _peer_lost(self, addr: str, reason: str) -> None:
        """The router declared ``addr`` dead (loop thread): re-send what it was to forward."""
        with self._lock:
            self._handled[addr] = None
            if len(self._handled) > _HANDLED_KEPT:
                del self._handled[next(iter(self._handled))]
            entries = self._by_fwd.pop(addr, None)
        if not entries:
            return
        for rec, edges in entries.items():
            for edge in edges:
                self._resend(rec, edge)
        log.info("re-sent %d cast(s) that proc %s (%s) was to forward to other hosts", len(entries), addr, reason)

    def _resend(self, rec: _Record, edge: Edge) -> None:
        fwd, child, ranks, sub = edge
        if self.router.dead_reason(child) is not None:
            return  # its own loss re-sends to the hosts below it
        out = rec.base.copy()
        out.ranks = ranks
        if sub:
            fill_hops(out.init("forward", len(sub)), sub, rec.seqs)
        else:
            out.init("forward", 0)
        out.origin = self.router.addr
        try:
            self.router.send(child, out, list(rec.bufs), seq=rec.seqs[child])
        except Exception as exc:
            log.warning("cannot re-send a cast to %s (its forwarder %s was lost): %s", child, fwd, exc)
            return
        self.resent += 1


_LEDGERS: weakref.WeakKeyDictionary[Any, CastLedger] = weakref.WeakKeyDictionary()
_LEDGERS_LOCK = threading.Lock()


def ledger_for(router: Any) -> CastLedger:
    """The ledger of ``router`` (made on first use; one per router)."""
    ledger = _LEDGERS.get(router)
    if ledger is None:
        with _LEDGERS_LOCK:
            ledger = _LEDGERS.get(router)
            if ledger is None:
                timeout = router.limits.peer_timeout_s
                ledger = _LEDGERS[router] = CastLedger(router, retain_s=2.0 * (timeout if timeout else 30.0))
    return ledger
