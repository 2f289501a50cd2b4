"""Entry point of a proc process: ``python -m monarch._mesh.proc_main --fd N --owner ADDR``.

The listening socket is inherited from the parent (already bound, and the parent connected to it
before this process started, so the first link this proc accepts is its owner's). The proc exits
when that link closes (the owner died or stopped it), so a client killed with SIGKILL leaves no
procs behind. A heartbeat thread tells the owner every ``peer_timeout_s / 4`` that this process
is alive, so a stopped (SIGSTOP) or frozen proc is noticed within ``peer_timeout_s``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
import sys
import threading
import time

# how long an exiting proc waits for its actors' __cleanup__, in seconds
_CLEANUP_TIMEOUT_S = 2.0
# how long an exiting proc waits for what it already sent to leave (links still being dialed
# finish dialing first), in seconds; the poll interval of that wait
_FLUSH_TIMEOUT_S = 1.0
_FLUSH_POLL_S = 0.005


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="monarch-proc")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--owner", required=True)
    parser.add_argument("--name", default="proc")
    ns = parser.parse_args(argv)
    preloaded = set(sys.modules)  # what the proc itself needs; later imports are its actors'

    from .._core.future import loop_thread_marker
    from .._transport.messages import ControlOp
    from . import current
    from . import logs as proc_logs
    from .runtime import Runtime, new_loop
    from .settings import settings_from_config

    plogs = proc_logs.install_proc_logs(ns.name)
    settings, token = settings_from_config()
    logging.basicConfig(
        level=settings.log_level,
        format=f"[{ns.name} %(levelname)s] %(message)s",
        handlers=[proc_logs.record_handler(plogs)] if plogs is not None else None,
    )
    from .context import install_log_prefix
    from .settings import log_prefix_enabled

    install_log_prefix(log_prefix_enabled(settings), None)
    boot = os.environ.pop("MONARCH_BOOTSTRAP", None)
    if boot:
        import base64

        import cloudpickle

        cloudpickle.loads(base64.b64decode(boot))()

    loop = new_loop()
    asyncio.set_event_loop(loop)
    loop_thread_marker.active = True
    lsock = socket.socket(fileno=ns.fd)
    rt = Runtime(
        loop,
        lsock,
        name=ns.name,
        runtime_dir=os.environ.get("MONARCH_RUNTIME_DIR", "/tmp"),
        owns_dir=False,
        token=token,
        parent_addr=ns.owner,
        root_addr=os.environ.get("MONARCH_ROOT_ADDR") or ns.owner,
        settings=settings,
    )
    current.install(rt)
    if plogs is not None:
        plogs.router = rt.router  # lines written from now on also reach the client's log sink
    owner = ns.owner
    exiting = threading.Event()

    def finish(code: int) -> None:
        if exiting.is_set():
            return
        exiting.set()
        _finalize(rt, preloaded)
        # stop owned procs first, then leave without running interpreter teardown in threads
        alive = rt.procs.alive()
        if alive:
            try:
                rt.stop_processes(alive, 2.0)
            except Exception:
                pass
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)

    def on_exit(env: object, bufs: object) -> None:
        # stop every actor (runs __cleanup__), then exit once all stopped (bounded)
        actors = [a for m in rt.host.meshes.values() for a in m.values() if not a.stopped.is_set()]
        for a in actors:
            a.stop()

        def wait_and_exit() -> None:
            deadline = time.monotonic() + _CLEANUP_TIMEOUT_S
            for a in actors:
                a.stopped.wait(max(0.0, deadline - time.monotonic()))
            _wait_flushed(rt, _FLUSH_TIMEOUT_S)
            finish(0)

        threading.Thread(target=wait_and_exit, name="monarch proc exit", daemon=True).start()

    def heartbeat() -> None:
        interval = settings.heartbeat_interval_s
        if interval is None:
            return
        while True:
            try:
                rt.router.send_control(owner, ControlOp.HEARTBEAT, sequenced=False)
            except Exception:
                return  # the owner is gone: owner_lost ends this process
            if exiting.wait(interval):
                return

    rt.router.on_owner_lost(lambda: finish(0))
    rt.router.handle_control(ControlOp.EXIT, on_exit, owner_only=True)
    def fail_and_exit() -> None:
        # the failure report to the owner and the refusals to callers were just sent, perhaps
        # on links still being dialed: ending now would cut them off mid-handshake (the peer
        # logs "peer closed the connection during authentication" and sees only "connection lost")
        _wait_flushed(rt, _FLUSH_TIMEOUT_S)
        finish(1)

    rt.on_proc_fails.append(lambda cause: threading.Thread(target=fail_and_exit, name="monarch proc failed", daemon=True).start())
    threading.Thread(target=heartbeat, name="monarch heartbeat", daemon=True).start()
    try:
        loop.run_forever()
    finally:
        finish(0)


def _wait_flushed(rt: object, timeout_s: float) -> None:
    """Wait (off the loop, at most ``timeout_s``) until every link of ``rt`` has written what was
    sent on it; the loop keeps running meanwhile. A polled wait: it runs once, as the proc ends."""
    flushed = getattr(getattr(getattr(rt, "router", None), "transport", None), "flushed", None)
    if flushed is None:
        return
    deadline = time.monotonic() + timeout_s
    while not flushed() and time.monotonic() < deadline:
        time.sleep(_FLUSH_POLL_S)


def _finalize(rt: object, preloaded: set[str]) -> None:
    """What a normal interpreter exit would run, before ``os._exit``: the ``atexit`` handlers
    run, then the actors' objects are dropped and the modules imported for them are cleared as
    interpreter finalization clears modules (``__del__`` of their objects and globals runs);
    Monarch runs all of this when a proc is stopped. Bounded: a handler that hangs is cut off by
    the exit watchdog."""
    import atexit
    import gc

    watchdog = threading.Timer(_CLEANUP_TIMEOUT_S + 3.0, os._exit, (1,))
    watchdog.daemon = True
    watchdog.start()
    try:
        # in a normal exit's order: the atexit handlers, then the objects
        atexit._run_exitfuncs()
        atexit._clear()  # the handlers held their objects: now those can go too
        host = getattr(rt, "host", None)
        if host is not None:
            for actors in list(host.meshes.values()):
                for inst in actors.values():
                    inst.obj = None
                    inst._bound.clear()
            host.meshes.clear()
        for name in reversed(list(sys.modules)):
            if name in preloaded or name == "monarch" or name.startswith("monarch."):
                continue
            module = sys.modules.get(name)
            file = getattr(module, "__file__", None) or ""
            # the user's own Python modules only: libraries (torch, numpy) tear down at os._exit
            if file.endswith(".py") and "site-packages" not in file and "dist-packages" not in file:
                module.__dict__.clear()
        gc.collect()  # objects in reference cycles (refcounting already freed the rest)
    except BaseException:  # exiting anyway; a broken handler must not stop it
        pass


if __name__ == "__main__":
    main()
