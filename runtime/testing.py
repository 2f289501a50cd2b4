"""Helpers for tests of code that uses monarch: meshes that are always stopped, leak checks.

Example::

    from monarch.testing import proc_mesh

    with proc_mesh({"gpus": 2}) as procs:
        counters = procs.spawn("counters", Counter)
        assert counters.value.call().get(timeout=10).item(gpus=0) == 0
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from ._mesh.proc_mesh import ProcMesh, this_host

__all__ = ["leaked_procs", "proc_mesh"]


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
