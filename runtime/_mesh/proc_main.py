"""Entry point of a proc process: ``python -m monarch._mesh.proc_main --fd N --owner ADDR``.

The listening socket is inherited from the parent (already bound, so the parent could connect
and queue messages before this process started). The proc exits when its owner's connection
closes (the owner died or stopped it), so a client killed with SIGKILL leaves no procs behind.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
import sys


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="monarch-proc")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--owner", required=True)
    parser.add_argument("--name", default="proc")
    ns = parser.parse_args(argv)
    logging.basicConfig(level=os.environ.get("MONARCH_LOG_LEVEL", "WARNING"), format=f"[{ns.name} %(levelname)s] %(message)s")

    from .._core.future import loop_thread_marker
    from .runtime import Runtime, _new_loop, _token_from_env, set_runtime

    boot = os.environ.pop("MONARCH_BOOTSTRAP", None)
    if boot:
        import base64

        import cloudpickle

        cloudpickle.loads(base64.b64decode(boot))()

    loop = _new_loop()
    asyncio.set_event_loop(loop)
    loop_thread_marker.active = True
    lsock = socket.socket(fileno=ns.fd)
    rt = Runtime(
        loop,
        lsock,
        name=ns.name,
        runtime_dir=os.environ.get("MONARCH_RUNTIME_DIR", "/tmp"),
        owns_dir=False,
        token=_token_from_env(),
        parent_addr=ns.owner,
    )
    set_runtime(rt)
    owner = ns.owner
    exiting = [False]

    def finish(code: int) -> None:
        if exiting[0]:
            return
        exiting[0] = True
        # stop owned procs first, then leave without running interpreter teardown in threads
        alive = [a for a, h in rt.children.items() if not h.exited.is_set()]
        if alive:
            try:
                rt.stop_processes(alive, 2.0)
            except Exception:
                pass
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)

    def owner_gone(origin: str) -> None:
        if origin == owner:
            finish(0)

    def on_exit(env: object, bufs: object) -> None:
        # stop every actor (runs __cleanup__), then exit
        actors = [a for m in rt.host.meshes.values() for a in m.values() if not a.stopped.is_set()]
        for a in actors:
            a.stop()

        async def wait_and_exit() -> None:
            for _ in range(200):
                if all(a.stopped.is_set() for a in actors):
                    break
                await asyncio.sleep(0.01)
            finish(0)

        loop.create_task(wait_and_exit())

    def proc_fails(cause: str) -> None:
        loop.call_soon_threadsafe(finish, 1)

    rt.router.on_incoming_closed.append(owner_gone)
    rt.router.control["exit"] = on_exit
    rt.host.on_proc_fails = proc_fails
    try:
        loop.run_forever()
    finally:
        finish(0)


if __name__ == "__main__":
    main()
