"""One running actor: its mailbox, where its handlers run, and the actor failure policy.

Sync actors run every handler on their own thread (so ``Future.get()`` inside a handler works);
async actors run on the proc's event loop, one message at a time unless the endpoint is marked
concurrent. ``__supervise__`` and ``__cleanup__`` run the same way, in order with messages.

Every handler is written once, as a generator of "steps" that yields whatever must be awaited
(an endpoint's coroutine, the next item of an async generator, a runtime future); two small
drivers in :mod:`monarch._mesh.steps` run the steps: ``drive_sync`` on the actor's thread,
``drive_async`` on the loop.

The failure policy lives in :meth:`ActorInstance._handler_raised` and nowhere else (as in
Monarch, and pykka's single failure policy):

- an exception in a handler whose caller awaits a reply (``call_one``, ``call``, ``choose``,
  ``stream``) -> ``ActorError`` to the caller; the actor keeps serving;
- an exception with no reply port (``broadcast``), in an explicit-response-port endpoint, or in
  ``__init__`` -> the actor fails: its owner is told (``MeshFailure``), the explicit port gets a
  ``SupervisionError``, every queued and later call gets ``SupervisionError``;
- ``SystemExit`` or ``KeyboardInterrupt`` (a request to end the process) -> the whole proc fails
  (after answering the in-flight call with ``SupervisionError``);
- any other ``BaseException`` -> the actor fails, whether or not the caller awaits a reply (the
  caller gets ``SupervisionError``); the proc and its other actors keep running, as in Monarch,
  where a ``BaseException`` kills the actor that raised it.

Bad input is not the actor's fault and never fails it: a message for an unknown endpoint or with
arguments that cannot be decoded is answered with an error (or logged, for a broadcast).
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
import os
import queue
import threading
import traceback
from typing import TYPE_CHECKING, Any

from .._core.errors import SupervisionError
from .._core.failure import MeshFailure
from .._core.future import loop_thread_marker
from .._core.shape import Point
from .actor import endpoint_table
from .context import Context, CreatorInstance, Instance, reset_context, set_context
from .endpoint import INIT_PROBE, TENSOR_CALLS_SEEN, EndpointSpec, take_tensor_call
from .steps import Steps, WaitFuture, awaitable, drive_async, drive_sync

if TYPE_CHECKING:
    from .hosting import ActorHost, Msg

__all__ = ["ActorInstance"]

log = logging.getLogger("monarch.actor")

_STOP = object()
# what a handler raises to end its whole proc (sys.exit, Ctrl-C); other BaseExceptions fail the actor
_PROC_ENDING = (SystemExit, KeyboardInterrupt)
# how long stopping an actor waits for each mesh it owns to stop, in seconds
_OWNED_STOP_TIMEOUT_S = 10.0


class _Supervise:
    __slots__ = ("failure",)

    def __init__(self, failure: MeshFailure) -> None:
        self.failure = failure


class _BadInput(Exception):
    """A message the actor cannot even start handling (unknown endpoint, undecodable args)."""


class ActorInstance:
    """A live actor of a mesh, hosted by this process's :class:`ActorHost`."""

    def __init__(
        self,
        host: ActorHost,
        mesh_id: str,
        name: str,
        rank: Point,
        cls: type,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        owner: str,
        creator: CreatorInstance | None = None,
    ) -> None:
        self.host = host
        self.mesh_id = mesh_id
        self.name = name
        self.rank = rank
        self.cls = cls
        self.owner = owner
        self.table = endpoint_table(cls)
        self.obj: Any = None
        self.state = "starting"
        self.failure: str | None = None
        self._failed_who: str | None = None  # set when a failure of an owned mesh failed this actor
        # introspection counters (the admin endpoint reads them): two attribute writes a message
        self.messages_handled = 0  # handlers finished (returned, raised or refused mid-way)
        self.last_endpoint: str | None = None  # the endpoint of the latest message taken up
        self.failures = 0  # handler exceptions (answered as ActorError) and failures of this actor
        self.instance = Instance(
            rank, f"{mesh_id}[{rank.rank}]", name, host.router.addr, os.getpid(), f"{cls.__module__}.{cls.__qualname__}", creator
        )
        self.instance._proc = host.this_proc_mesh()
        self.instance._actor = self  # found by supervision.current_owner
        self._args = args
        self._kwargs = kwargs
        self._bound: dict[str, Any] = {}
        # the context of the latest message: reused while messages come for the same position
        # of the same slice (contexts and points are immutable; a call_one stream always does)
        self._last_context: tuple[Any, int, Context] | None = None
        self.stopped = threading.Event()
        self.constructed = threading.Event()  # __init__ has run (or failed)
        self.on_stopped: Any = None
        self._in_flight: set[Msg] = set()  # messages whose handler is running
        self._flight_lock = threading.Lock()
        self._supervision: queue.SimpleQueue[MeshFailure] | None = None  # sync actors, lazily
        self._supervising: asyncio.Lock | None = None  # async actors, lazily
        if self.table.is_async:
            self._tasks: set[asyncio.Task[Any]] = set()  # bodies of concurrent endpoints
            self._aqueue: asyncio.Queue[Any] = asyncio.Queue()
            self._task = host.router.loop.create_task(self._run_async())
        else:
            self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
            self._thread = threading.Thread(
                target=self._run_sync, name=f"actor {self.instance.actor_id}", daemon=True
            )
            self._thread.start()

    def __repr__(self) -> str:
        return f"<ActorInstance {self.instance.actor_id} {self.cls.__qualname__} state={self.state}>"

    @property
    def queue_depth(self) -> int:
        """Messages waiting in this actor's mailbox (not counting the one being handled)."""
        return self._aqueue.qsize() if self.table.is_async else self._queue.qsize()

    @property
    def display(self) -> str:
        return f"{self.name}[{self.rank.rank}]"

    @property
    def qualified(self) -> str:
        """Monarch's name of this actor: ``<module.Class name{'gpus': 3/4}>``."""
        return f"<{self.cls.__module__}.{self.cls.__qualname__} {self.name}{self.rank}>"

    # -- mailbox ----------------------------------------------------------------------------
    def post(self, msg: Any) -> None:
        """Queue a message (any thread for sync actors; the loop thread for async ones); a call
        to a failed actor is refused at once."""
        if self.state == "failed" and msg is not _STOP and type(msg) is not _Supervise:
            self.host.refuse(msg, self._refusal())
            return
        if self.table.is_async:
            loop = self.host.router.loop
            if _on_loop(loop):
                self._aqueue.put_nowait(msg)
                if self.stopped.is_set():
                    self._drain()
            else:
                loop.call_soon_threadsafe(self.post, msg)
        else:
            self._queue.put(msg)
            if self.stopped.is_set():
                self._drain()

    def stop(self) -> None:
        """Queue the stop: earlier messages are handled first, then owned meshes are stopped
        and ``__cleanup__(None)`` runs."""
        self.post(_STOP)

    def post_supervise(self, failure: MeshFailure) -> None:
        """Deliver a failure of a mesh this actor owns to its ``__supervise__`` at once, without
        waiting for the running handler (Monarch's delivery); supervision events of one actor
        run one at a time, in arrival order (any thread)."""
        if self.table.is_async:
            self.host.router.call_on_loop(self._supervise_task, failure)
            return
        with self._flight_lock:
            q = self._supervision
            if q is None:
                q = self._supervision = queue.SimpleQueue()
                threading.Thread(target=self._run_supervision, name=f"supervise {self.instance.actor_id}", daemon=True).start()
        q.put(failure)

    def _run_supervision(self) -> None:
        """A sync actor's supervision thread: ``__supervise__`` runs here, beside its handlers."""
        loop_thread_marker.active = False
        q = self._supervision
        assert q is not None
        self.constructed.wait()  # __supervise__ never runs before __init__ has finished
        while not self.stopped.is_set() or not q.empty():
            try:
                failure = q.get(timeout=1.0)
            except queue.Empty:
                continue
            drive_sync(self._supervise_steps(failure))

    def _supervise_task(self, failure: MeshFailure) -> None:
        if self._supervising is None:
            self._supervising = asyncio.Lock()
        lock = self._supervising

        async def run() -> None:
            async with lock:
                await drive_async(self._supervise_steps(failure))

        self.host.router.loop.create_task(run())

    # -- the two mailbox loops ------------------------------------------------------------------
    def _run_sync(self) -> None:
        loop_thread_marker.active = False
        self._construct()
        get = self._queue.get
        begin_call = self.host.router.begin_call
        while True:
            msg = get()
            if msg is _STOP:
                drive_sync(self._cleanup_steps(None))
                return
            if type(msg) is _Supervise:
                drive_sync(self._supervise_steps(msg.failure))
                continue
            if self.state != "running":
                self.host.refuse(msg, self._refusal())
                continue
            begin_call(msg.reply_addr)  # what it sends its caller before answering stays ahead
            drive_sync(self._handle_steps(msg, False))
            del msg  # let received buffers go back to the pool before the next message

    async def _run_async(self) -> None:
        self._construct()
        q = self._aqueue
        while True:
            msg = await q.get()
            if msg is _STOP:
                await self._cancel_tasks()
                await drive_async(self._cleanup_steps(None))
                return
            if type(msg) is _Supervise:
                await drive_async(self._supervise_steps(msg.failure))
                continue
            if self.state != "running":
                self.host.refuse(msg, self._refusal())
                continue
            entry = self.table.by_name.get(msg.endpoint)
            if entry is not None and entry[0].concurrent:
                task = asyncio.get_running_loop().create_task(drive_async(self._handle_steps(msg, True)))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            else:
                await drive_async(self._handle_steps(msg, True))
            del msg

    async def _cancel_tasks(self) -> None:
        """Cancel the bodies of concurrent endpoints still running and wait for them (bounded)."""
        tasks = [t for t in self._tasks if not t.done()]
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=_OWNED_STOP_TIMEOUT_S)

    # -- handlers (written once; see the module docstring) -----------------------------------
    def _construct(self) -> None:
        token = set_context(Context(self.instance, self.rank))
        try:
            self.obj = self.cls(*self._args, **self._kwargs)
            if self.state == "starting":  # not if __init__ aborted the actor itself
                self.state = "running"
        except Exception as exc:
            self._fail(exc, "__init__")
        except _PROC_ENDING as exc:
            self._proc_fails(exc, None)
        except BaseException as exc:  # the policy: any other BaseException fails the actor
            self._fail(exc, "__init__")
        finally:
            reset_context(token)
            self._args = ()
            self._kwargs = {}
            self.constructed.set()

    def _impl(self, name: str) -> tuple[EndpointSpec, Any]:
        entry = self.table.by_name.get(name)
        if entry is None:
            if name == INIT_PROBE:
                return _INIT_SPEC, _initialized
            fn = getattr(self.obj, name, None) if not name.startswith("_") else None
            if fn is None or not callable(fn):
                raise _BadInput(f"{self.cls.__qualname__} has no endpoint {name!r}")
            return EndpointSpec(name=name, py_name=name), fn
        bound = self._bound.get(name)
        if bound is None:
            bound = getattr(self.obj, entry[1])
            self._bound[name] = bound
        return entry[0], bound

    def _prepare(self, msg: Msg) -> tuple[EndpointSpec, Any, tuple[Any, ...], dict[str, Any]]:
        spec, fn = self._impl(msg.endpoint)
        try:
            args, kwargs = msg.decode_args(spec)
        except Exception as exc:
            raise _BadInput(f"cannot decode the arguments of {msg.endpoint!r}: {type(exc).__name__}: {exc}") from exc
        msg.bufs = []  # the decoded arguments own the buffers now
        if spec.explicit_response_port:
            args = (msg.port(spec), *args)
        elif TENSOR_CALLS_SEEN[0] and not (self.table.is_async or spec.stream or spec.concurrent):
            fn = take_tensor_call(fn)  # an rref, or monarch.Tensor handles among the arguments
        return spec, fn, tuple(args), kwargs

    def _handle_steps(self, msg: Msg, on_loop: bool) -> Steps:
        last = self._last_context
        if last is not None and last[0] is msg.shape and last[1] == msg.pos:
            ctx = last[2]
        else:
            ctx = Context(self.instance, msg.message_rank())
            self._last_context = (msg.shape, msg.pos, ctx)
        token = set_context(ctx)
        spec: EndpointSpec | None = None
        in_flight = self._in_flight
        in_flight.add(msg)  # set.add/discard are atomic under the GIL; _refuse_in_flight copies it
        self.last_endpoint = msg.endpoint
        try:
            try:
                spec, fn, args, kwargs = self._prepare(msg)
                if spec.stream:
                    gen = fn(*args, **kwargs)
                    if inspect.isasyncgen(gen):
                        if not on_loop:
                            raise TypeError(f"endpoint {msg.endpoint!r} of a sync actor returned an async generator")
                        it = gen.__aiter__()
                        while True:
                            try:
                                item = yield it.__anext__()
                            except StopAsyncIteration:
                                break
                            self.host.reply(msg, spec, item, None, last=False)
                    else:
                        for item in gen:
                            self.host.reply(msg, spec, item, None, last=False)
                    self.host.reply_end(msg, spec)
                else:
                    result = fn(*args, **kwargs)
                    if awaitable(result):
                        result = yield result
                    if not spec.explicit_response_port:
                        self.host.reply(msg, spec, result, None, last=True)
            except Exception as exc:
                # read at call time: a forked proc imported this module before its environment
                if os.environ.get("MONARCH_DEBUG_POST_MORTEM") == "1" and not isinstance(exc, _BadInput):
                    importlib.import_module("monarch.tools.debug_hook").post_mortem(exc)
                self._handler_raised(msg, spec, exc)
            except asyncio.CancelledError:
                # a concurrent endpoint's body cancelled as the actor stops: its caller is told
                if msg.reply_addr and not (spec is not None and spec.explicit_response_port):
                    self.host.refuse(
                        msg, SupervisionError.actor_stopped(self.qualified, f"stopped while handling {msg.endpoint!r} ({self.display})")
                    )
                raise
            except _PROC_ENDING as exc:
                self._proc_fails(exc, msg)
            except GeneratorExit:
                raise  # the steps themselves are being closed: not the handler's failure
            except BaseException as exc:  # the policy: any other BaseException fails the actor
                self._fail(exc, msg.endpoint)
                self.host.refuse(msg, self._refusal())  # explicit-port endpoints and broadcasts too
        finally:
            in_flight.discard(msg)
            self.messages_handled += 1
            reset_context(token)

    def _supervise_steps(self, failure: MeshFailure) -> Steps:
        if self.state != "running" or self.obj is None:
            self._escalate(failure, None)
            return
        token = set_context(Context(self.instance, self.rank))
        try:
            try:
                handled = self.obj.__supervise__(failure)
                if awaitable(handled):
                    handled = yield handled
            except Exception as exc:
                self._fail(exc, "__supervise__", chained=[failure])
                return
            if handled is not True:
                self._escalate(failure, None)
        finally:
            reset_context(token)

    def _cleanup_steps(self, exc: BaseException | None) -> Steps:
        for f in self.host.supervisor.stop_owned_by(self):
            try:
                yield WaitFuture(f, _OWNED_STOP_TIMEOUT_S)
            except Exception as e:
                log.warning("stopping a mesh owned by %s: %s", self.display, e)
        if self.obj is not None and self.state == "running":
            token = set_context(Context(self.instance, self.rank))
            try:
                r = self.obj.__cleanup__(exc)
                if awaitable(r):
                    yield r
            except Exception:
                log.exception("__cleanup__ of %s raised", self.display)
            finally:
                reset_context(token)
        self._stopped()

    # -- the failure policy ---------------------------------------------------------------------
    def _handler_raised(self, msg: Msg, spec: EndpointSpec | None, exc: Exception) -> None:
        self.failures += 1
        if isinstance(exc, _BadInput):
            if msg.reply_addr:
                self.host.reply(msg, None, None, TypeError(str(exc)), last=True)
            else:
                log.error("actor %s dropped a broadcast: %s", self.display, exc)
            return
        explicit = spec is not None and spec.explicit_response_port
        if msg.reply_addr and not explicit:
            self.host.reply(msg, spec, None, exc, last=True)
            return
        self._fail(exc, msg.endpoint)
        if explicit and msg.reply_addr:
            self.host.refuse(msg, self._refusal())

    def _escalate(self, failure: MeshFailure, exc: BaseException | None) -> None:
        """``__supervise__`` did not handle ``failure``: this actor fails, chaining it."""
        if self.state == "failed":
            # already failed: pass the child's failure up unchanged
            self.host.actor_failed(self, f"owned mesh {failure.mesh_name!r} failed: {failure.cause}", "", [failure])
            return
        self.state = "failed"
        self.failure = f"unhandled failure of owned mesh {failure.mesh_name!r}: {failure.cause}"
        # calls refused from now on name the actor that failed first, through this one, as
        # Monarch does: "The actor <...Owner owner{...}>.<...Child child{...}> and all ..."
        self._failed_who = f"{self.qualified}.{_lineage(failure)}"
        log.error("actor %s failed: %s", self.display, self.failure)
        self.host.actor_failed(self, self.failure, "", [failure])
        self._refuse_in_flight()

    def _fail(self, exc: BaseException, where: str, chained: list[MeshFailure] | None = None) -> None:
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        if where in ("__init__", "__supervise__"):
            self.failures += 1  # a handler's exception was counted by _handler_raised
        self.state = "failed"
        self.failure = f"{type(exc).__name__}: {exc}" + (f" (in {where})" if where == "__init__" else "")
        log.error("actor %s failed in %s: %s", self.display, where, self.failure)
        # the owner hears first: links are FIFO, so an owner that is also a refused caller has
        # recorded the failure before its call fails, and its next call is refused locally
        self.host.actor_failed(self, self.failure, tb, chained)
        self._refuse_in_flight()

    def _refuse_in_flight(self) -> None:
        """The actor is unhealthy now: callers of handlers still running and of messages still
        queued get SupervisionError at once (late results are dropped), as every later call
        does (:meth:`post` refuses them without queueing: a hung handler cannot hold them)."""
        while True:
            try:
                running = list(self._in_flight)  # the handler thread may add or discard meanwhile
                break
            except RuntimeError:  # "set changed size during iteration": take it again
                continue
        for msg in running:
            self.host.refuse(msg, self._refusal())
        self._drain(keep_control=True)

    def _proc_fails(self, exc: BaseException, msg: Msg | None) -> None:
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        self.state = "failed"
        self.failure = f"{type(exc).__name__}: {exc} (the proc exited)"
        self.host.actor_failed(self, self.failure, tb)  # before the refusal, as in _fail
        if msg is not None:
            self.host.refuse(msg, self._refusal())
        self.host.proc_fails(self.failure)

    def _refusal(self) -> SupervisionError:
        if self.state == "stopped":
            return SupervisionError.actor_stopped(self.qualified, f"stopped by client ({self.display})")
        return SupervisionError.actor_failed(self._failed_who or self.qualified, f"{self.failure}\n(actor {self.display})")

    # -- stopping -------------------------------------------------------------------------------
    def _stopped(self) -> None:
        if self.state in ("running", "starting"):
            self.state = "stopped"
        self.stopped.set()
        cb = self.on_stopped
        if cb is not None:
            cb()
        self._drain()

    def _drain(self, *, keep_control: bool = False) -> None:
        """Refuse the calls queued (after a stop, or once the actor failed) rather than leave
        their callers hanging. ``keep_control``: a queued stop or supervision event stays queued."""
        kept: list[Any] = []
        if self.table.is_async:
            while not self._aqueue.empty():
                msg = self._aqueue.get_nowait()
                if msg is _STOP or type(msg) is _Supervise:
                    kept.append(msg)
                else:
                    self.host.refuse(msg, self._refusal())
            if keep_control:
                for msg in kept:
                    self._aqueue.put_nowait(msg)
            return
        while True:
            try:
                msg = self._queue.get_nowait()
            except queue.Empty:
                break
            if msg is _STOP or type(msg) is _Supervise:
                kept.append(msg)
            else:
                self.host.refuse(msg, self._refusal())
        if keep_control:
            for msg in kept:
                self._queue.put(msg)


_INIT_SPEC = EndpointSpec(name=INIT_PROBE, py_name=INIT_PROBE)


def _lineage(failure: MeshFailure) -> str:
    """The failed actor of ``failure`` and, through the failures it chains, the actor whose
    failure started it: ``<...Child child{...}>.<...Grandchild gc{...}>``."""
    who = failure.who
    return f"{who}.{_lineage(failure.chained[0])}" if failure.chained else who


def _initialized() -> None:
    """The reserved endpoint: reached only once ``__init__`` has run."""
    return None


def _on_loop(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False
