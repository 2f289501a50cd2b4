"""Futures that can be waited on from any thread (``.get()``) or awaited from any event loop.

Semantics follow Meta Monarch's ``monarch.actor.Future``: ``get(timeout=)`` blocks the calling
thread and does not consume the future when it times out; ``await fut`` suspends the awaiting task.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Coroutine, Generator
from typing import Any, Generic, TypeVar

from .errors import CallTimeout

__all__ = ["Future", "loop_thread_marker"]

R = TypeVar("R")

_PENDING = 0
_RESULT = 1
_ERROR = 2

# Set to True on threads that run a runtime event loop: blocking there would deadlock.
loop_thread_marker = threading.local()


class Future(Generic[R]):
    """The eventual result of a call.

    ``get`` may be called any number of times; every call returns the same result or raises the
    same exception. Resolution happens on a runtime thread; callbacks run there.
    """

    __slots__ = ("__weakref__", "_callbacks", "_coro", "_direct", "_state", "_value", "_waiters")

    def __init__(self) -> None:
        self._state = _PENDING
        self._value: Any = None
        self._callbacks: list[Callable[[Future[R]], None]] | None = None
        # one locked lock per blocked get(); completion releases them (lighter than a Condition)
        self._waiters: list[Any] | None = None
        self._coro: Coroutine[Any, Any, R] | None = None  # see _from_coro
        # set by the runtime when the result arrives on a link no event loop reads (a caller
        # thread's direct link): a blocking wait reads it itself (``pump``); any other way of
        # waiting first hands the link to the loop (``handover``)
        self._direct: Any = None

    # -- completion (runtime side) ------------------------------------------------------
    def set_result(self, value: R) -> None:
        """Complete with ``value``. A second completion is ignored (first one wins)."""
        self._complete(_RESULT, value)

    def set_exception(self, exc: BaseException) -> None:
        """Complete with ``exc``; ``get`` and ``await`` raise it."""
        self._complete(_ERROR, exc)

    def _complete(self, state: int, value: Any) -> None:
        with _LOCK:
            if self._state != _PENDING:
                return
            self._value = value
            self._state = state
            callbacks, self._callbacks = self._callbacks, None
            waiters, self._waiters = self._waiters, None
        if waiters:
            for w in waiters:
                w.release()
        if callbacks:
            for cb in callbacks:
                cb(self)

    def add_done_callback(self, cb: Callable[[Future[R]], None]) -> None:
        """Run ``cb(self)`` when done: at once if already done, else on the completing thread."""
        if self._direct is not None and self._state == _PENDING:
            self._direct.handover()
        with _LOCK:
            if self._state == _PENDING:
                if self._callbacks is None:
                    self._callbacks = []
                self._callbacks.append(cb)
                return
        cb(self)

    # -- user side ------------------------------------------------------------------------
    def done(self) -> bool:
        """Whether the result (or exception) is there; never blocks."""
        if self._state != _PENDING:
            return True
        if self._direct is not None:  # someone polls: the loop must read the result's link
            self._direct.handover()
        return False

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """The exception the call failed with, or None; waits like ``get``."""
        self._wait(timeout)
        return self._value if self._state == _ERROR else None

    def get(self, timeout: float | None = None) -> R:
        """Block until the result is available and return it.

        Args:
            timeout: seconds to wait; None waits forever.

        Raises:
            CallTimeout: (a ``TimeoutError``) the result did not arrive in time; the future
                stays usable and a later ``get`` may still succeed.
            ActorError: the endpoint raised.
            SupervisionError: the actor failed or was stopped.
            RuntimeError: called on a runtime event-loop thread, where waiting would deadlock
                (use ``await`` in async endpoints).
        """
        self._wait(timeout)
        if self._state == _ERROR:
            raise self._value
        return self._value  # type: ignore[no-any-return]

    def result(self, timeout: float | None = None) -> R:
        """Alias of :meth:`get` (``concurrent.futures`` spelling)."""
        return self.get(timeout)

    def _wait(self, timeout: float | None) -> None:
        if self._state != _PENDING:
            return
        if self._coro is not None:
            self._run_coro_here(timeout)
            return
        if getattr(loop_thread_marker, "active", False):
            raise RuntimeError(
                "Future.get() called on the runtime's event loop thread (inside an async endpoint "
                "or callback): this would deadlock; use 'await future' instead"
            )
        asked = timeout
        direct = self._direct
        if direct is not None:
            deadline = None if timeout is None else time.monotonic() + max(timeout, 0.0)
            # returns when done, at the deadline, or when it cannot read the link here
            direct.pump(self, deadline)
            if self._state != _PENDING:
                return
            if deadline is not None:
                timeout = deadline - time.monotonic()
                if timeout <= 0:
                    raise CallTimeout(f"no result after {asked} s")
        waiter = _allocate_lock()
        waiter.acquire()
        with _LOCK:
            if self._state != _PENDING:
                return
            if self._waiters is None:
                self._waiters = [waiter]
            else:
                self._waiters.append(waiter)
        if waiter.acquire(True, -1 if timeout is None else max(timeout, 0.0)):
            return
        with _LOCK:
            if self._waiters is not None and waiter in self._waiters:
                self._waiters.remove(waiter)
        if self._state == _PENDING:
            raise CallTimeout(f"no result after {asked} s")

    def _finished(self) -> bool:
        """``done()`` without its side effect (a direct link's hand-over)."""
        return self._state != _PENDING

    def _add_waiter(self, waiter: Any) -> bool:
        """Call ``waiter.release()`` at completion; False (nothing registered) if done already."""
        with _LOCK:
            if self._state != _PENDING:
                return False
            if self._waiters is None:
                self._waiters = [waiter]
            else:
                self._waiters.append(waiter)
            return True

    def _remove_waiter(self, waiter: Any) -> None:
        with _LOCK:
            if self._waiters is not None and waiter in self._waiters:
                self._waiters.remove(waiter)

    def __await__(self) -> Generator[Any, None, R]:
        coro = self._take_coro()
        if coro is not None:  # runs inline in the awaiting task
            try:
                value = yield from coro.__await__()
            except BaseException as exc:
                self.set_exception(exc)
                raise
            self.set_result(value)
            return value
        if self._state == _PENDING:
            loop = asyncio.get_running_loop()
            waiter: asyncio.Future[None] = loop.create_future()
            owner = threading.get_ident()

            def wake(_: Future[R]) -> None:
                if threading.get_ident() == owner:
                    if not waiter.done():
                        waiter.set_result(None)
                else:
                    loop.call_soon_threadsafe(_set_if_pending, waiter)

            self.add_done_callback(wake)
            yield from waiter.__await__()
        if self._state == _ERROR:
            raise self._value
        return self._value  # type: ignore[no-any-return]

    def __repr__(self) -> str:
        state = {_PENDING: "pending", _RESULT: "done", _ERROR: "failed"}[self._state]
        return f"<Future {state}>"

    @classmethod
    def _from_coro(cls, coro: Coroutine[Any, Any, R]) -> Future[R]:
        """A future of ``coro``'s result that runs ``coro`` when first awaited (inline, in the
        awaiting task) or waited on with ``get()`` (on the calling thread, in a private event loop).

        As Monarch's ``Future._from_coro`` (a private constructor that Monarch's own code and
        tests use): ``coro`` runs at most once, and only if someone asks for the result. A
        ``get(timeout=...)`` that runs the coroutine runs it to completion: the timeout bounds
        only a wait for a run another thread has started.
        """
        f: Future[R] = cls()
        f._coro = coro
        return f

    def _take_coro(self) -> Coroutine[Any, Any, R] | None:
        with _LOCK:
            coro, self._coro = self._coro, None
        return coro

    def _run_coro_here(self, timeout: float | None) -> None:
        # the coroutine runs to completion on this thread: ``timeout`` bounds only the wait
        # for a coroutine another thread is running
        coro = self._take_coro()
        if coro is None:  # another thread took it: wait for its result like any future
            self._wait(timeout)
            return
        if getattr(loop_thread_marker, "active", False):
            self._coro = coro
            raise RuntimeError(
                "Future.get() called on the runtime's event loop thread (inside an async endpoint "
                "or callback): this would deadlock; use 'await future' instead"
            )
        box: list[tuple[int, Any]] = []

        def run() -> None:
            try:
                box.append((_RESULT, asyncio.run(coro)))
            except BaseException as exc:  # delivered to whoever waits on the future
                box.append((_ERROR, exc))

        try:
            asyncio.get_running_loop()
        except RuntimeError:
            run()  # no loop on this thread: a private one here
        else:  # a loop runs on this thread (e.g. a notebook): asyncio.run needs another thread
            t = threading.Thread(target=run, name="monarch future coroutine")
            t.start()
            t.join()
        state, value = box[0]
        self._complete(state, value)

    @classmethod
    def completed(cls, value: R) -> Future[R]:
        """An already-resolved future."""
        f: Future[R] = cls()
        f.set_result(value)
        return f


def _set_if_pending(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


_LOCK = threading.Lock()
_allocate_lock = threading.Lock
