"""Session-wide checks: no proc process may outlive the test run."""

from __future__ import annotations

import os
import time

import pytest


def _proc_mains() -> set[int]:
    """Live descendants of this test process that run monarch code: procs started from scratch
    (``monarch._mesh.proc_main``), the fork server and the procs it forked (which show the fork
    server's command line)."""
    parents: dict[int, int] = {}
    cmds: dict[int, bytes] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read()
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read().decode(errors="replace")
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        if fields[0] == "Z":
            continue
        parents[int(entry)] = int(fields[1])
        cmds[int(entry)] = cmd
    me = os.getpid()
    out = set()
    for pid, cmd in cmds.items():
        if b"monarch._mesh" not in cmd:
            continue
        p, hops = parents.get(pid, 0), 0
        while p and p != me and hops < 64:
            p, hops = parents.get(p, 0), hops + 1
        if p == me:
            out.add(pid)
    return out


_BEFORE: set[int] = set()


def pytest_sessionstart(session: pytest.Session) -> None:
    _BEFORE.update(_proc_mains())


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # the client runtime stops its procs at exit; give stragglers of stopped meshes a moment
    try:
        from monarch._mesh import current

        rt = current.installed()
        if rt is not None:
            rt.shutdown(3.0)
    except Exception:
        pass
    deadline = time.monotonic() + 5.0
    leaked = _proc_mains() - _BEFORE
    while leaked and time.monotonic() < deadline:
        time.sleep(0.1)
        leaked = _proc_mains() - _BEFORE
    if leaked:
        print(f"\nLEAKED monarch proc processes: {sorted(leaked)}")
        for pid in leaked:
            try:
                os.kill(pid, 9)
            except OSError:
                pass
        session.exitstatus = 1


@pytest.fixture(autouse=True, scope="session")
def _record_unhandled_failures() -> object:
    """In tests, unhandled failures are recorded instead of exiting the test runner; tests of
    the default hook run it in a subprocess."""
    import monarch.actor as ma

    seen: list[object] = []
    previous = ma.unhandled_fault_hook
    ma.unhandled_fault_hook = seen.append
    ma._test_unhandled_failures = seen  # type: ignore[attr-defined]
    yield seen
    ma.unhandled_fault_hook = previous
