"""Failure reports arriving at an owner, and the root's ``unhandled_fault_hook``.

Semantics follow Meta Monarch's supervision model (Erlang/OTP ownership tree): a failure goes to
the owner of the failed mesh; at the root (the client) an unhandled failure goes to
``monarch.actor.unhandled_fault_hook``, whose default prints one readable report and exits the
client with status 1.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from typing import Any

from .._core.failure import MeshFailure
from .._transport.pickle_codec import loads

__all__ = ["default_unhandled_fault_hook", "install_failure_handler"]

log = logging.getLogger("monarch.supervision")


def default_unhandled_fault_hook(failure: MeshFailure) -> None:
    """Print a readable report of ``failure`` to stderr and exit the client with status 1.

    Runs on the client's runtime thread; the exit happens on a separate thread after the
    client's procs have been stopped, so nothing is left behind.
    """
    sys.stderr.write("\n*** monarch: unhandled actor failure ***\n" + failure.report() + "\n")
    sys.stderr.flush()

    def leave() -> None:
        from .runtime import get_runtime

        try:
            get_runtime().shutdown(2.0)
        finally:
            os._exit(1)

    threading.Thread(target=leave, name="monarch fault exit", daemon=True).start()


def install_failure_handler(rt: Any) -> None:
    """Handle ``failure`` supervision messages arriving at this process."""

    def on_failure(env: Any, bufs: list[memoryview]) -> None:
        failure: MeshFailure = loads(env.payload, bufs)
        mesh_id = env.actor
        rt.mesh_failures.setdefault(mesh_id, f"{failure.actor} failed: {failure.cause}")
        owner_actors = rt.owned_by.get(mesh_id)
        if owner_actors is not None:
            owner_actors.supervise(failure)
            return
        from .. import actor as public

        hook = getattr(public, "unhandled_fault_hook", default_unhandled_fault_hook)
        try:
            hook(failure)
        except Exception:
            log.exception("unhandled_fault_hook raised")

    rt.router.control["failure"] = on_failure
