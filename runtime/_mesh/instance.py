"""One running actor: its mailbox, where its handlers run, and the actor failure policy.

Sync actors run every handler on their own thread (so ``Future.get()`` inside a handler works);
async actors run on the proc's event loop, one message at a time unless the endpoint is marked
concurrent. The failure policy lives in :meth:`ActorInstance._failed_handler` and nowhere else:

- an exception in a handler whose caller awaits a reply -> ``ActorError`` to the caller; the
  actor keeps serving;
- an exception with no reply port (``broadcast``), in an explicit-response-port endpoint, or in
  ``__init__`` -> the actor fails: its owner is told (``MeshFailure``) and every pending and later
  call gets ``SupervisionError``;
- a ``BaseException`` that is not an ``Exception`` (``SystemExit``, ``KeyboardInterrupt``) ->
  the whole proc fails.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import queue
import sys
import threading
import traceback
from typing import TYPE_CHECKING, Any

from .._core.errors import SupervisionError
from .._core.future import loop_thread_marker
from .._core.shape import Point
from .context import Context, Instance, reset_context, set_context

if TYPE_CHECKING:
    from .hosting import ActorHost, Msg

__all__ = ["ActorInstance"]

log = logging.getLogger("monarch.actor")

_STOP = object()


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
    def post(self, msg: Msg) -> None:
        """Queue a message (loop thread)."""
        if self.table.is_async:
            self._aqueue.put_nowait(msg)
        else:
            self._queue.put(msg)

    def stop(self) -> None:
        """Queue the stop: earlier messages are handled first, then ``__cleanup__`` runs."""
        self.post(_STOP)  # type: ignore[arg-type]

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
            self._proc_fails(exc)
        finally:
            reset_context(token)
            self._args = ()
            self._kwargs = {}

    def _impl(self, name: str) -> tuple[Any, Any]:
        entry = self.table.by_name.get(name)
        if entry is None:
            fn = getattr(self.obj, name, None) if not name.startswith("_") else None
            if fn is None or not callable(fn):
                raise AttributeError(f"{self.cls.__qualname__} has no endpoint {name!r}")
            from .endpoint import EndpointSpec

            return EndpointSpec(name=name, py_name=name), fn
        bound = self._bound.get(name)
        if bound is None:
            bound = getattr(self.obj, entry[1])
            self._bound[name] = bound
        return entry[0], bound

    def _handle_sync(self, msg: Msg) -> None:
        token = set_context(Context(self.instance, msg.message_rank()))
        try:
            try:
                spec, fn = self._impl(msg.endpoint)
                args, kwargs = msg.decode_args(spec)
                msg.bufs = []  # the decoded arguments own the buffers now
                if spec.explicit_response_port:
                    args = (msg.port(spec), *tuple(args))
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
                self._failed_handler(msg, exc)
            except BaseException as exc:
                self._proc_fails(exc)
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
            if self.state != "running":
                self.host.refuse(msg, self._refusal())
                continue
            entry = self.table.by_name.get(msg.endpoint)
            if entry is not None and entry[0].concurrent:
                asyncio.get_running_loop().create_task(self._handle_async(msg))
            else:
                await self._handle_async(msg)

    async def _handle_async(self, msg: Msg) -> None:
        token = set_context(Context(self.instance, msg.message_rank()))
        try:
            try:
                spec, fn = self._impl(msg.endpoint)
                args, kwargs = msg.decode_args(spec)
                msg.bufs = []  # the decoded arguments own the buffers now
                if spec.explicit_response_port:
                    args = (msg.port(spec), *tuple(args))
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
                self._failed_handler(msg, exc)
            except asyncio.CancelledError:
                raise
            except BaseException as exc:
                self._proc_fails(exc)
        finally:
            reset_context(token)

    # -- the failure policy ---------------------------------------------------------------------
    def _failed_handler(self, msg: Msg, exc: Exception) -> None:
        spec_entry = self.table.by_name.get(msg.endpoint)
        explicit = spec_entry is not None and spec_entry[0].explicit_response_port
        if msg.reply_addr and not explicit:
            self.host.reply(msg, spec_entry[0] if spec_entry else None, None, exc, last=True)
            return
        self._fail(exc, msg.endpoint)

    def _fail(self, exc: BaseException, where: str) -> None:
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        self.state = "failed"
        self.failure = f"{type(exc).__name__}: {exc}"
        log.error("actor %s failed in %s: %s", self.display, where, self.failure)
        self.host.actor_failed(self, self.failure, tb)

    def _proc_fails(self, exc: BaseException) -> None:
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        self.state = "failed"
        self.failure = f"{type(exc).__name__}: {exc} (the proc exited)"
        self.host.actor_failed(self, self.failure, tb)
        self.host.proc_fails(self.failure)

    def _refusal(self) -> SupervisionError:
        if self.state == "stopped":
            return SupervisionError(f"actor {self.display} was stopped")
        return SupervisionError(f"actor {self.display} failed: {self.failure}")

    def _cleanup(self, exc: BaseException | None) -> None:
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
        if self.state == "running" or self.state == "starting":
            self.state = "stopped"
        self.stopped.set()
        self.host.actor_stopped(self)

    async def _acleanup(self, exc: BaseException | None) -> None:
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
        if self.state == "running" or self.state == "starting":
            self.state = "stopped"
        self.stopped.set()
        self.host.actor_stopped(self)


async def _await(aw: Any) -> Any:
    return await aw


def _excepthook_safe() -> None:  # pragma: no cover - kept for symmetry with threading hooks
    sys.stderr.flush()
