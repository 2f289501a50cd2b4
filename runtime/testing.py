"""Helpers for tests of code that uses monarch: meshes that are always stopped, leak checks, and
an in-memory transport for millisecond unit tests of the runtime.

Example::

    from monarch.testing import proc_mesh

    with proc_mesh({"gpus": 2}) as procs:
        counters = procs.spawn("counters", Counter)
        assert counters.value.call().get(timeout=10).item(gpus=0) == 0

In-memory runtimes (no OS processes, no sockets; each "process" is a :class:`Runtime` with its
own event-loop thread, linked through a :class:`MemoryNetwork`)::

    from monarch.testing import memory_runtimes

    with memory_runtimes(2) as rts:
        ref = rts.spawn("counters", Counter)
        assert rts.call(ref, "value", rank=1).get(timeout=5) == 0
        rts.network.kill(rts.procs[1].router.addr)
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

from ._core.exports import publish
from ._core.future import Future, loop_thread_marker
from ._core.shape import Extent
from ._mesh.actor_mesh import MeshRef
from ._mesh.endpoint import INIT_PROBE
from ._mesh.instance import ActorInstance
from ._mesh.memory_transport import MemoryLink, MemoryListening, MemoryNetwork, MemoryTransport
from ._mesh.proc_mesh import ProcMesh, this_host
from ._mesh.router import RouterLimits
from ._mesh.runtime import Runtime
from ._mesh.settings import RuntimeSettings
from ._mesh.sinks import OneSink
from ._transport.frame import Envelope
from ._transport.messages import ControlOp, Kind, MessageFlags
from ._transport.pickle_codec import PICKLE_CODEC

__all__ = [
    "QUIET_SETTINGS",
    "MemoryLink",
    "MemoryListening",
    "MemoryNetwork",
    "MemoryRuntimes",
    "MemoryTransport",
    "leaked_procs",
    "memory_runtimes",
    "proc_mesh",
]



@contextlib.contextmanager
def proc_mesh(per_host: dict[str, int] | None = None, *, processes: int | None = None, timeout_s: float = 30.0) -> Iterator[ProcMesh]:
    """A ProcMesh on this host that is stopped (and its processes reaped) on exit, even when
    the body raises.

    Args:
        per_host: dimensions, e.g. ``{"gpus": 2}``.
        processes: pack the points onto this many OS processes.
        timeout_s: bound on the stop; stragglers are killed.
    """
    procs = this_host().spawn_procs(per_host=per_host, processes=processes)
    try:
        yield procs
    finally:
        procs.stop().get(timeout_s)


def leaked_procs() -> list[int]:
    """PIDs of live monarch proc processes whose parent is this process (zombies excluded)."""
    me = os.getpid()
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read().decode(errors="replace")
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read().decode(errors="replace")
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        state, ppid = fields[0], int(fields[1])
        if ppid == me and state != "Z" and "monarch._mesh.proc_main" in cmd:
            out.append(int(entry))
    return out


# -- in-memory runtimes ---------------------------------------------------------------------------

#: settings of in-memory runtimes unless told otherwise: no fork server, no heartbeats, no
#: liveness timers (tests that want them pass ``heartbeat_interval_s`` and ``peer_timeout_s``)
QUIET_SETTINGS = RuntimeSettings(
    use_fork_server=False,
    heartbeat_interval_s=None,
    limits=RouterLimits(peer_timeout_s=None),
)


class MemoryRuntimes:
    """A root client :class:`Runtime` and ``n`` proc runtimes in this process, on one
    :class:`MemoryNetwork`; made by :func:`memory_runtimes`.

    Each runtime has its own event-loop thread, as each real process has its own loop, so a
    delivery between two of them crosses threads exactly as in production and one of them can
    be frozen without stopping the others. The procs are wired like real ones: ``parent_addr``
    is the client's address, the client's link to each is the proc's first accepted (owner)
    link, and with heartbeats configured each proc beats to the client, which watches it.
    No runtime is installed in ``monarch._mesh.current`` (which holds one per OS process), so
    drive the runtimes directly (:meth:`spawn`, :meth:`call`, their ``router``/``host``/
    ``supervisor``), not through ``ActorMesh``.

    Attributes:
        network: the network linking the runtimes (fault injection by address).
        client: the root runtime (``mem:client``; ``parent_addr`` None).
        procs: the proc runtimes (``mem:procs-0`` ...), named ``procs/0`` ...
        proc_failures: ``{addr: cause}`` of procs that failed (a ``BaseException`` in a
            handler); such a proc is then killed on the network, as its OS process would exit.
        owner_lost: addresses of procs whose owner link closed (a real proc would exit).
    """

    def __init__(self, network: MemoryNetwork, settings: RuntimeSettings) -> None:
        self.network = network
        self.settings = settings
        self.client: Runtime = None  # type: ignore[assignment]  # set by memory_runtimes
        self.procs: list[Runtime] = []
        self.proc_failures: dict[str, str] = {}
        self.owner_lost: set[str] = set()
        self.proc_failed = threading.Event()
        self._threads: dict[str, threading.Thread] = {}
        self._closing = False
        self._runtime_dir = tempfile.gettempdir()  # never written: nothing here spawns

    def __repr__(self) -> str:
        return f"<MemoryRuntimes procs={len(self.procs)} failed={sorted(self.proc_failures)} {self.network!r}>"

    @property
    def runtimes(self) -> list[Runtime]:
        """The client, then the procs."""
        return [self.client, *self.procs]

    # -- building ------------------------------------------------------------------------------
    def _start(self, name: str, addr: str, parent_addr: str | None) -> Runtime:
        loop = asyncio.new_event_loop()
        ready: concurrent.futures.Future[Runtime] = concurrent.futures.Future()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop_thread_marker.active = True
            try:
                rt = Runtime(
                    loop,
                    addr,
                    name=name,
                    runtime_dir=self._runtime_dir,
                    owns_dir=False,
                    token=None,
                    parent_addr=parent_addr,
                    settings=self.settings,
                    transport=self.network.transport_factory(loop, self.settings.transport),
                )
            except BaseException as exc:
                ready.set_exception(exc)
                loop.close()
                return
            rt.loop_thread = threading.current_thread()
            ready.set_result(rt)
            try:
                loop.run_forever()
            finally:
                loop.close()

        thread = threading.Thread(target=run, name=f"memory runtime {name}", daemon=True)
        thread.start()
        rt = ready.result(10.0)
        self._threads[rt.router.addr] = thread
        return rt

    def _wire_proc(self, rt: Runtime) -> None:
        addr = rt.router.addr

        def failed(cause: str) -> None:
            self.proc_failures[addr] = cause
            self.proc_failed.set()
            self.network.kill(addr)  # the OS process would exit with status 1

        rt.on_proc_fails.append(failed)
        rt.router.on_owner_lost(lambda: self.owner_lost.add(addr))
        interval = self.settings.heartbeat_interval_s
        if interval is not None:
            self.on_loop(rt, self._beat, rt, interval)
            if self.settings.limits.peer_timeout_s is not None:
                self.on_loop(self.client, self.client.router.watch, addr)
        self.client.router.connection(addr)  # first: the proc's owner link

    def _beat(self, rt: Runtime, interval: float) -> None:
        if self._closing or self.network.is_killed(rt.router.addr):
            return
        try:
            rt.router.send_control(rt.parent_addr or "", ControlOp.HEARTBEAT, sequenced=False)
        except Exception:
            return  # the owner is gone
        rt.loop.call_later(interval, self._beat, rt, interval)

    # -- driving -------------------------------------------------------------------------------
    def on_loop(self, rt: Runtime, fn: Callable[..., Any], *args: Any, timeout_s: float = 5.0) -> Any:
        """Run ``fn(*args)`` on ``rt``'s loop thread and return its result (or raise its error).

        Raises:
            TimeoutError: it did not finish within ``timeout_s`` seconds.
        """
        out: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def run() -> None:
            try:
                out.set_result(fn(*args))
            except BaseException as exc:  # handed to the caller
                out.set_exception(exc)

        rt.loop.call_soon_threadsafe(run)
        return out.result(timeout_s)

    def spawn(
        self,
        name: str,
        cls: type,
        *args: Any,
        on: list[Runtime] | None = None,
        by: Runtime | None = None,
        owner: ActorInstance | None = None,
        wait: bool = True,
        **kwargs: Any,
    ) -> MeshRef:
        """Spawn one actor of ``cls`` on each runtime of ``on`` (default: every proc), through
        the real spawn path (``Runtime.spawn_actors``: a ``spawn`` control message).

        Args:
            name: the mesh name.
            cls: the actor class (importable, as procs unpickle it).
            on: the hosting runtimes, rank ``i`` on ``on[i]``.
            by: the spawning runtime (default: the client); the mesh is recorded in its supervisor.
            owner: the owning actor (an :class:`ActorInstance` hosted by ``by``); None: ``by`` itself.
            wait: wait (5 s) until every actor ran ``__init__``.
            *args, **kwargs: for ``__init__``.

        Raises:
            SupervisionError: ``wait`` and an ``__init__`` raised.
        """
        hosts = self.procs if on is None else on
        spawner = by or self.client
        addrs = [h.router.addr for h in hosts]
        ref = spawner.spawn_actors(name, cls, args, kwargs, addrs, Extent(["procs"], [len(addrs)]), owner)
        if wait:
            for r in range(len(addrs)):
                self.call(ref, INIT_PROBE, rank=r, by=spawner).get(5.0)
        return ref

    def _call_envelope(self, rt: Runtime, ref: MeshRef, endpoint: str, rank: int, payload: Any, flags: int) -> Any:
        env = Envelope.new_message()
        env.kind = Kind.CALL
        env.origin = rt.router.addr
        env.actor = ref.mesh_id
        env.endpoint = endpoint
        env.encoding = PICKLE_CODEC.encoding
        env.flags = flags
        env.sender = rt.name
        env.ranks = [rank]
        s = env.init("shape")
        s.labels = list(ref.shape.labels)
        s.offset = ref.shape.offset
        s.sizes = list(ref.shape.sizes)
        s.strides = list(ref.shape.strides)
        return env

    def call(self, ref: MeshRef, endpoint: str, *args: Any, rank: int = 0, by: Runtime | None = None, **kwargs: Any) -> Future[Any]:
        """Call ``endpoint`` of actor ``rank`` of ``ref`` from ``by`` (default: the client) and
        return the future of its result (a :class:`OneSink`, as ``call_one`` uses).

        Raises:
            SupervisionError: the actor's process is known dead.
        """
        rt = by or self.client
        addr = ref.addrs[rank]
        sink = OneSink(rt.router, PICKLE_CODEC, {addr: {rank}})
        payload, bufs = PICKLE_CODEC.encode_call(args, kwargs)
        env = self._call_envelope(rt, ref, endpoint, rank, payload, MessageFlags.NONE)
        env.payload = payload
        env.replyAddr = rt.router.addr
        env.replyPort = sink.port
        try:
            rt.router.send(addr, env, bufs)
        except BaseException:
            rt.router.close_port(sink.port)
            raise
        return sink.future

    def broadcast(self, ref: MeshRef, endpoint: str, *args: Any, rank: int = 0, by: Runtime | None = None, **kwargs: Any) -> None:
        """Send ``endpoint`` to actor ``rank`` of ``ref`` with no reply port (``broadcast``)."""
        rt = by or self.client
        payload, bufs = PICKLE_CODEC.encode_call(args, kwargs)
        env = self._call_envelope(rt, ref, endpoint, rank, payload, MessageFlags.NONE)
        env.payload = payload
        rt.router.send(ref.addrs[rank], env, bufs)

    def actor(self, ref: MeshRef, rank: int = 0) -> ActorInstance:
        """The live :class:`ActorInstance` of rank ``rank`` of ``ref`` (in its hosting runtime).

        Raises:
            KeyError: it is not (yet) hosted there.
        """
        host = next(rt for rt in self.runtimes if rt.router.addr == ref.addrs[rank])
        return host.host.meshes[ref.mesh_id][rank]

    # -- ending --------------------------------------------------------------------------------
    def close(self, timeout_s: float = 2.0) -> None:
        """Stop every actor (bounded by ``timeout_s``), close every router and end the loops."""
        self._closing = True
        for rt in self.runtimes:
            self.network.thaw(rt.router.addr)
        actors: list[ActorInstance] = []
        for rt in self.runtimes:
            if not rt.loop.is_running():
                continue
            mine = [a for m in rt.host.meshes.values() for a in m.values() if not a.stopped.is_set()]
            for a in mine:
                rt.loop.call_soon_threadsafe(a.stop)
            actors += mine
        deadline = _monotonic() + timeout_s
        for a in actors:
            a.stopped.wait(max(0.0, deadline - _monotonic()))
        for rt in self.runtimes:
            if rt.loop.is_running():
                with contextlib.suppress(TimeoutError, RuntimeError):
                    self.on_loop(rt, _close_router, rt, timeout_s=timeout_s)
        for thread in self._threads.values():
            thread.join(timeout_s)


def _close_router(rt: Runtime) -> None:
    rt.router.close()
    rt.loop.stop()


def _monotonic() -> float:
    import time

    return time.monotonic()


@contextlib.contextmanager
def memory_runtimes(n: int = 2, *, settings: RuntimeSettings | None = None) -> Iterator[MemoryRuntimes]:
    """A client and ``n`` proc runtimes linked in memory (see :class:`MemoryRuntimes`); every
    actor is stopped and every loop thread ended on exit, even when the body raises.

    Args:
        n: how many proc runtimes.
        settings: their settings; None: :data:`QUIET_SETTINGS` (no heartbeats, no liveness
            timer). The fork server is always off.

    Raises:
        ValueError: ``n`` is negative.
        TimeoutError: a runtime did not come up within 10 s.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    st = replace(settings or QUIET_SETTINGS, use_fork_server=False)
    rts = MemoryRuntimes(MemoryNetwork(), st)
    try:
        rts.client = rts._start("client", "mem:client", None)
        for i in range(n):
            rts.procs.append(rts._start(f"procs/{i}", f"mem:procs-{i}", rts.client.router.addr))
        for rt in rts.procs:
            rts._wire_proc(rt)
        if rts.procs:
            rts.client.procs_ready([rt.router.addr for rt in rts.procs]).get(5.0)
        yield rts
    finally:
        if rts.client is not None:
            rts.close()


publish(globals(), __all__, __name__)
