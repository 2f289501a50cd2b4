"""Environment inspection of a mesh's procs: ``procs.env.get/list/set`` (issue 14 §4).

Every call goes to the procs' admin agents (one system actor per proc, see
:mod:`monarch._mesh.admin_agent`) over the runtime's own links and returns a runtime ``Future``, as
``call()`` does: ``.get()`` it in plain code, ``await`` it in async code. The result of ``get``
and ``list`` is a ``ValueMesh`` shaped like the ProcMesh (several points packed into one process
share its values).
"""

from __future__ import annotations

import threading
from typing import Any

from .._core.future import Future
from .._core.value_mesh import ValueMesh
from .._mesh.admin_agent import validate_env_name
from .._mesh.runtime import system_agents

__all__ = ["ProcEnv"]


class ProcEnv:
    """The environment variables (``os.environ``) of the procs of a ProcMesh.

    Args:
        procs: the ProcMesh (``procs.env`` builds this).
    """

    def __init__(self, procs: Any) -> None:
        self._procs = procs

    def __repr__(self) -> str:
        return f"<ProcEnv of {self._procs!r}>"

    def get(self, name: str) -> Future[ValueMesh[str | None]]:
        """The value of ``name`` on every proc (None where it is unset).

        Args:
            name: the variable's name.

        Returns:
            A Future of a ``ValueMesh[str | None]`` shaped like the ProcMesh.

        Raises:
            TypeError: ``name`` is not a str (at the call, before anything is sent).
            ValueError: ``name`` is empty or contains ``=`` or NUL.
            SupervisionError: (from the Future) a proc is not running.
        """
        validate_env_name(name)
        return self._gather("env", ("", [name]), lambda d: d[name])

    def list(self, prefix: str = "") -> Future[ValueMesh[dict[str, str]]]:
        """Every variable whose name starts with ``prefix`` (``""``: all), on every proc.

        Returns:
            A Future of a ``ValueMesh[dict[str, str]]`` (sorted by name) shaped like the ProcMesh.

        Raises:
            TypeError: ``prefix`` is not a str.
            SupervisionError: (from the Future) a proc is not running.
        """
        if not isinstance(prefix, str):
            raise TypeError(f"list(prefix=...) must be a str, got {type(prefix).__name__}")
        return self._gather("env", (prefix,), lambda d: d)

    def set(self, **values: str | None) -> Future[None]:
        """Set variables in every proc's ``os.environ`` (None removes one); code that runs in
        the procs afterwards (endpoints, subprocesses they start) sees them.

        Returns:
            A Future that completes when every proc has applied them.

        Raises:
            TypeError: a value is neither a str nor None.
            ValueError: no variables given, or an invalid name.
            SupervisionError: (from the Future) a proc is not running.
        """
        if not values:
            raise ValueError("set() needs at least one VAR=value")
        for k, v in values.items():
            validate_env_name(k)
            if v is not None and not isinstance(v, str):
                raise TypeError(
                    f"set({k}=...): values are str (or None to remove), got {type(v).__name__}"
                )
        out: Future[None] = Future()
        inner = self._gather("set_env", (dict(values),), lambda d: None)
        inner.add_done_callback(
            lambda f: out.set_exception(e) if (e := f.exception(0)) else out.set_result(None)
        )
        return out

    def _gather(self, endpoint: str, args: tuple[Any, ...], pick: Any) -> Future[Any]:
        procs = self._procs
        shape = procs._shape
        addrs = [procs._addrs[r] for r in shape.ranks()]
        distinct = list(dict.fromkeys(addrs))
        agents = system_agents().agents(distinct)
        futures = {a: getattr(agents[a], endpoint).call_one(*args) for a in distinct}
        out: Future[Any] = Future()
        lock = threading.Lock()
        remaining = [len(futures)]

        def one(f: Future[Any]) -> None:
            exc = f.exception(0)
            with lock:
                if out.done():
                    return
                if exc is not None:
                    out.set_exception(exc)
                    return
                remaining[0] -= 1
                if remaining[0]:
                    return
            out.set_result(ValueMesh(shape, [pick(futures[a].get(0)) for a in addrs]))

        for f in futures.values():
            f.add_done_callback(one)
        return out
