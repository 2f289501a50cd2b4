"""One running actor: its mailbox, where its handlers run, and the actor failure policy.

Sync actors run every handler on their own thread (so ``Future.get()`` inside a handler works);
async actors run on the proc's event loop, one message at a time unless the endpoint is marked
concurrent. ``__supervise__`` and ``__cleanup__`` run the same way, in order with messages.

The failure policy lives in :meth:`ActorInstance._handler_raised` and nowhere else (as in
Monarch, and pykka's single failure policy):

- an exception in a handler whose caller awaits a reply (``call_one``, ``call``, ``choose``,
  ``stream``) -> ``ActorError`` to the caller; the actor keeps serving;
- an exception with no reply port (``broadcast``), in an explicit-response-port endpoint, or in
  ``__init__`` -> the actor fails: its owner is told (``MeshFailure``), the explicit port gets a
  ``SupervisionError``, every queued and later call gets ``SupervisionError``;
- a ``BaseException`` that is not an ``Exception`` (``SystemExit``, ``KeyboardInterrupt``) ->
  the whole proc fails (after answering the in-flight call with ``SupervisionError``).

Bad input is not the actor's fault and never fails it: a message for an unknown endpoint or with
arguments that cannot be decoded is answered with an error (or logged, for a broadcast).
"""

from __future__ import annotations

import asyncio
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
from .context import Context, Instance, reset_context, set_context

if TYPE_CHECKING:
    from .endpoint import EndpointSpec
    from .hosting import ActorHost, Msg

__all__ = ["ActorInstance"]

log = logging.getLogger("monarch.actor")

_STOP = object()


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
    ) -> None:
        from .actor import endpoint_table

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
        self.instance = Instance(rank, f"{mesh_id}[{rank.rank}]", name, host.router.addr, os.getpid())
        self.instance._proc = host.this_proc_mesh()
        self.instance._actor = self  # type: ignore[attr-defined]  # found by supervision.current_owner
        self._args = args
        self._kwargs = kwargs
        self._bound: dict[str, Any] = {}
        self.stopped = threading.Event()
        if self.table.is_async:
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
    def display(self) -> str:
        return f"{self.name}[{self.rank.rank}]"

    # -- mailbox ----------------------------------------------------------------------------
    def post(self, msg: Any) -> None:
        """Queue a message (any thread for sync actors; the loop thread for async ones)."""
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
        """Deliver a failure of a mesh this actor owns to its ``__supervise__`` (any thread)."""
        self.post(_Supervise(failure))

    # -- sync actors ----------------------------------------------------------------------------
    def _run_sync(self) -> None:
        loop_thread_marker.active = False
        self._construct()
        get = self._queue.get
        while True:
            msg = get()
            if msg is _STOP:
                self._cleanup(None)
                return
            if type(msg) is _Supervise:
                self._supervise_sync(msg.failure)
                continue
            if self.state != "running":
                self.host.refuse(msg, self._refusal())
                continue
            self._handle_sync(msg)
            del msg  # let received buffers go back to the pool before the next message

    def _construct(self) -> None:
        token = set_context(Context(self.instance, self.rank))
        try:
            self.obj = self.cls(*self._args, **self._kwargs)
            self.state = "running"
        except Exception as exc:
            self._fail(exc, "__init__")
        except BaseException as exc:
            self._proc_fails(exc, None)
        finally:
            reset_context(token)
            self._args = ()
            self._kwargs = {}

    def _impl(self, name: str) -> tuple[EndpointSpec, Any]:
        entry = self.table.by_name.get(name)
        if entry is None:
            fn = getattr(self.obj, name, None) if not name.startswith("_") else None
            if fn is None or not callable(fn):
                raise _BadInput(f"{self.cls.__qualname__} has no endpoint {name!r}")
            from .endpoint import EndpointSpec

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
        return spec, fn, tuple(args), kwargs

    def _handle_sync(self, msg: Msg) -> None:
        token = set_context(Context(self.instance, msg.message_rank()))
        spec: EndpointSpec | None = None
        try:
            try:
                spec, fn, args, kwargs = self._prepare(msg)
                if spec.stream:
                    for item in fn(*args, **kwargs):
                        self.host.reply(msg, spec, item, None, last=False)
                    self.host.reply_end(msg, spec)
                else:
                    result = fn(*args, **kwargs)
                    if inspect.isawaitable(result):
                        result = asyncio.run(_await(result))
                    if not spec.explicit_response_port:
                        self.host.reply(msg, spec, result, None, last=True)
            except Exception as exc:
                self._handler_raised(msg, spec, exc)
            except BaseException as exc:
                self._proc_fails(exc, msg)
        finally:
            reset_context(token)

    def _supervise_sync(self, failure: MeshFailure) -> None:
        if self.state != "running" or self.obj is None:
            self._escalate(failure, None)
            return
        token = set_context(Context(self.instance, self.rank))
        try:
            try:
                handled = self.obj.__supervise__(failure)
                if inspect.isawaitable(handled):
                    handled = asyncio.run(_await(handled))
            except Exception as exc:
                self._fail(exc, "__supervise__", chained=[failure])
                return
            if handled is not True:
                self._escalate(failure, None)
        finally:
            reset_context(token)

    # -- async actors ---------------------------------------------------------------------------
    async def _run_async(self) -> None:
        self._construct()
        q = self._aqueue
        while True:
            msg = await q.get()
            if msg is _STOP:
                await self._acleanup(None)
                return
            if type(msg) is _Supervise:
                await self._supervise_async(msg.failure)
                continue
            if self.state != "running":
                self.host.refuse(msg, self._refusal())
                continue
            entry = self.table.by_name.get(msg.endpoint)
            if entry is not None and entry[0].concurrent:
                asyncio.get_running_loop().create_task(self._handle_async(msg))
            else:
                await self._handle_async(msg)
            del msg

    async def _handle_async(self, msg: Msg) -> None:
        token = set_context(Context(self.instance, msg.message_rank()))
        spec: EndpointSpec | None = None
        try:
            try:
                spec, fn, args, kwargs = self._prepare(msg)
                if spec.stream:
                    gen = fn(*args, **kwargs)
                    if inspect.isasyncgen(gen):
                        async for item in gen:
                            self.host.reply(msg, spec, item, None, last=False)
                    else:
                        for item in gen:
                            self.host.reply(msg, spec, item, None, last=False)
                    self.host.reply_end(msg, spec)
                else:
                    result = fn(*args, **kwargs)
                    if inspect.isawaitable(result):
                        result = await result
                    if not spec.explicit_response_port:
                        self.host.reply(msg, spec, result, None, last=True)
            except Exception as exc:
                self._handler_raised(msg, spec, exc)
            except asyncio.CancelledError:
                raise
            except BaseException as exc:
                self._proc_fails(exc, msg)
        finally:
            reset_context(token)

    async def _supervise_async(self, failure: MeshFailure) -> None:
        if self.state != "running" or self.obj is None:
            self._escalate(failure, None)
            return
        token = set_context(Context(self.instance, self.rank))
        try:
            try:
                handled = self.obj.__supervise__(failure)
                if inspect.isawaitable(handled):
                    handled = await handled
            except Exception as exc:
                self._fail(exc, "__supervise__", chained=[failure])
                return
            if handled is not True:
                self._escalate(failure, None)
        finally:
            reset_context(token)

    # -- the failure policy ---------------------------------------------------------------------
    def _handler_raised(self, msg: Msg, spec: EndpointSpec | None, exc: Exception) -> None:
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
        log.error("actor %s failed: %s", self.display, self.failure)
        self.host.actor_failed(self, self.failure, "", [failure])

    def _fail(self, exc: BaseException, where: str, chained: list[MeshFailure] | None = None) -> None:
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        self.state = "failed"
        self.failure = f"{type(exc).__name__}: {exc}" + (f" (in {where})" if where == "__init__" else "")
        log.error("actor %s failed in %s: %s", self.display, where, self.failure)
        self.host.actor_failed(self, self.failure, tb, chained)

    def _proc_fails(self, exc: BaseException, msg: Msg | None) -> None:
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        self.state = "failed"
        self.failure = f"{type(exc).__name__}: {exc} (the proc exited)"
        if msg is not None:
            self.host.refuse(msg, self._refusal())
        self.host.actor_failed(self, self.failure, tb)
        self.host.proc_fails(self.failure)

    def _refusal(self) -> SupervisionError:
        if self.state == "stopped":
            return SupervisionError(f"actor {self.display} was stopped")
        return SupervisionError(f"actor {self.display} failed: {self.failure}")

    # -- stopping -------------------------------------------------------------------------------
    def _stop_owned(self) -> list[Any]:
        from .runtime import get_runtime

        return get_runtime().supervisor.stop_owned_by(self)

    def _cleanup(self, exc: BaseException | None) -> None:
        for f in self._stop_owned():
            try:
                f.get(10.0)
            except Exception as e:
                log.warning("stopping a mesh owned by %s: %s", self.display, e)
        if self.obj is not None and self.state == "running":
            token = set_context(Context(self.instance, self.rank))
            try:
                r = self.obj.__cleanup__(exc)
                if inspect.isawaitable(r):
                    asyncio.run(_await(r))
            except Exception:
                log.exception("__cleanup__ of %s raised", self.display)
            finally:
                reset_context(token)
        self._stopped()

    async def _acleanup(self, exc: BaseException | None) -> None:
        for f in self._stop_owned():
            try:
                await asyncio.wait_for(_await(f), 10.0)
            except Exception as e:
                log.warning("stopping a mesh owned by %s: %s", self.display, e)
        if self.obj is not None and self.state == "running":
            token = set_context(Context(self.instance, self.rank))
            try:
                r = self.obj.__cleanup__(exc)
                if inspect.isawaitable(r):
                    await r
            except Exception:
                log.exception("__cleanup__ of %s raised", self.display)
            finally:
                reset_context(token)
        self._stopped()

    def _stopped(self) -> None:
        if self.state in ("running", "starting"):
            self.state = "stopped"
        self.stopped.set()
        self.host.actor_stopped(self)
        self._drain()

    def _drain(self) -> None:
        """Refuse anything queued after the stop rather than leave its caller hanging."""
        if self.table.is_async:
            while not self._aqueue.empty():
                msg = self._aqueue.get_nowait()
                if msg is not _STOP and type(msg) is not _Supervise:
                    self.host.refuse(msg, self._refusal())
            return
        while True:
            try:
                msg = self._queue.get_nowait()
            except queue.Empty:
                break
            if msg is not _STOP and type(msg) is not _Supervise:
                self.host.refuse(msg, self._refusal())


async def _await(aw: Any) -> Any:
    return await aw


def _on_loop(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False
