"""Monarch ``monarch.actor`` names that this project does not build yet, or builds only as shims.

Each name is importable (so Monarch programs import unchanged) and says what it is at the point
of use: ``attach`` and ``default_bootstrap_cmd`` (multi-host names not built yet), ``debug_controller``, ``get_meter`` and the
``ProcId``/``Uid`` classes raise ``NotImplementedError`` when called; ``span`` and ``traced`` are
documented no-op tracing shims (there is no telemetry backend here, so a span records nothing).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Callable, Iterator
from typing import Any, NoReturn, ParamSpec, TypeVar, overload

__all__ = [
    "ProcId",
    "Uid",
    "attach",
    "debug_controller",
    "default_bootstrap_cmd",
    "get_meter",
    "span",
    "traced",
]

_P = ParamSpec("_P")
_R = TypeVar("_R")

_MULTI_HOST = "issue 12 (host agents work: run_worker_loop_forever / monarch host serve, attach_to_workers)"


def _multi_host(what: str) -> NoReturn:
    raise NotImplementedError(f"{what} is not built yet: {_MULTI_HOST}")


def attach(addr: str) -> NoReturn:
    """Monarch's ``attach(addr)``: reach the job's procs through a remote gateway. NOT BUILT YET.

    Raises:
        NotImplementedError: always (multi-host support is issue 12).
    """
    _multi_host(f"attach({addr!r})")


def default_bootstrap_cmd() -> NoReturn:
    """Monarch's ``default_bootstrap_cmd``: the command that starts a host's procs. NOT BUILT
    YET: procs here are started by the runtime itself (``spawn_procs(bootstrap=..., env=...)``
    customise them).

    Raises:
        NotImplementedError: always (multi-host support is issue 12).
    """
    _multi_host("default_bootstrap_cmd()")


def debug_controller() -> NoReturn:
    """Monarch's ``debug_controller``: the interactive actor debugger. NOT BUILT YET.

    Raises:
        NotImplementedError: always.
    """
    raise NotImplementedError("debug_controller() is not built yet: there is no actor debugger in monarch-idl")


def get_meter() -> NoReturn:
    """Monarch's ``get_meter``: the process's OpenTelemetry meter. NOT BUILT: monarch-idl has
    no metrics backend (and does not depend on OpenTelemetry).

    Raises:
        NotImplementedError: always.
    """
    raise NotImplementedError("get_meter() is not built: monarch-idl has no metrics backend (no OpenTelemetry)")


class ProcId:
    """Monarch's ``ProcId`` (a proc's id in its Rust runtime). NOT BUILT: procs here are named
    by their address (``context().actor_instance.proc_addr``).

    Raises:
        NotImplementedError: on construction.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError("ProcId is not built: procs are named by address (context().actor_instance.proc_addr)")


class Uid:
    """Monarch's ``Uid`` (a unique id of its Rust runtime). NOT BUILT: actors here are named by
    ``context().actor_instance.actor_id``.

    Raises:
        NotImplementedError: on construction.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError("Uid is not built: actors are named by context().actor_instance.actor_id")


@contextlib.contextmanager
def span(name: str) -> Iterator[None]:
    """Monarch's ``span(name)``, as a NO-OP SHIM: a context manager that records nothing (there
    is no telemetry backend here); it exists so instrumented Monarch code runs unchanged.

    Raises:
        TypeError: ``name`` is not a str.
    """
    if not isinstance(name, str):
        raise TypeError(f"span(name): name must be a str, got {type(name).__name__}")
    yield


@overload
def traced(fn: Callable[_P, _R]) -> Callable[_P, _R]: ...
@overload
def traced(*, name: str) -> Callable[[Callable[_P, _R]], Callable[_P, _R]]: ...
def traced(
    fn: Callable[_P, _R] | None = None, *, name: str | None = None
) -> Callable[_P, _R] | Callable[[Callable[_P, _R]], Callable[_P, _R]]:
    """Monarch's ``@traced`` / ``@traced(name=...)``, as a NO-OP SHIM: the function (sync or
    async) runs inside :func:`span`, which records nothing; results and exceptions pass through.
    """

    def decorator(f: Callable[_P, _R]) -> Callable[_P, _R]:
        label = name if name is not None else getattr(f, "__name__", "traced")
        if inspect.iscoroutinefunction(f):

            @functools.wraps(f)
            async def run_async(*args: _P.args, **kwargs: _P.kwargs) -> Any:
                with span(label):
                    return await f(*args, **kwargs)

            return run_async  # type: ignore[return-value]  # same signature, coroutine result

        @functools.wraps(f)
        def run(*args: _P.args, **kwargs: _P.kwargs) -> _R:
            with span(label):
                return f(*args, **kwargs)

        return run

    if fn is not None:
        return decorator(fn)
    return decorator
