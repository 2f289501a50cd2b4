"""``--keep-running`` of the digits examples: keep training a live 4-proc job until Ctrl-C while
this folder is synced to the procs on every save, with hot reload (``monarch.tools`` code sync)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def keep_running(procs: Any, one_step: Callable[[int], float], first_step: int) -> None:
    """``--keep-running``: sync this folder to the procs with hot reload on every save, then train
    until Ctrl-C, printing the loss every 50 steps (and each reload)."""
    from pathlib import Path

    from monarch.tools.config.workspace import Workspace

    here = Path(__file__).resolve().parent  # examples/
    watch = procs.sync_workspace(Workspace(dirs=[here]), auto_reload=True, watch=True).get(60)
    print(
        f"keep running: edit {here / 'digits_step.py'} and save to change the next step; Ctrl-C stops",
        flush=True,
    )
    import signal
    import threading

    # Ctrl-C ends the loop between two steps (not inside one), then the example evaluates as usual
    interrupted = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda *_: interrupted.set())
    step, seen, errors = first_step, 0, 0
    try:
        while not interrupted.is_set():
            loss = one_step(step)
            for res in watch.results[seen:]:
                mods = sorted({m for ms in res.reloaded.values() for m in ms})
                print(
                    f"step {step}: synced {res.files_sent} file(s), reloaded {mods} on {len(res.reloaded)} procs",
                    flush=True,
                )
            seen = len(watch.results)
            for exc in watch.errors[errors:]:
                print(f"step {step}: sync failed: {type(exc).__name__}: {exc}", flush=True)
            errors = len(watch.errors)
            if step % 50 == 0:
                print(f"step {step} loss {loss:.4f}", flush=True)
            step += 1
        print(f"stopped after step {step}", flush=True)
    finally:
        signal.signal(signal.SIGINT, previous)
        watch.stop()
