"""The owner proc's RDMA manager: control requests over actor messages.

Monarch sets up an RC queue pair per peer over the actor channel. Here, the first region that a
proc inside the actor runtime registers spawns (once per proc, through the public actor API) a
small :class:`RDMAManager` actor in that proc; its mesh reference travels inside every handle
(``Descriptor.manager``). A reader whose own process runs the actor runtime sends its control
requests to it: ``connect_qp`` (ibverbs queue-pair numbers, PSNs, GIDs) and ``drop``. Anywhere
else (a process without actors on either side, or a manager that is gone) the owner's RDMA TCP
server answers the same requests, so every handle keeps working.

When the manager is spawned is set by ``MONARCH_RDMA_CONTROL`` / ``configure(control=...)``:
``auto`` (owners with an ibverbs device), ``actor`` (every owner in the actor runtime) or
``tcp`` (never). The runtime is looked up at run time: it is a lower layer, and a process that
only uses ``monarch.rdma`` never starts it.
"""

from __future__ import annotations

import logging
import os
import pickle
import threading
import time
from typing import Any, cast

from monarch._core.errors import ActorError, CallTimeout, RDMAError, SupervisionError
from monarch._mesh.current import installed
from monarch._transport.address import parse_address
from monarch.actor import Actor, ActorMesh, context, endpoint, this_proc

from ._config import current
from ._descriptor import Descriptor

__all__ = ["ManagerGone", "RDMAManager", "control_via_manager", "manager_of", "manager_ref"]

logger = logging.getLogger(__name__)


class ManagerGone(RDMAError):
    """The owner proc's manager actor is stopped or unreachable; its TCP server may still answer."""


class RDMAManager(Actor):
    """Answers RDMA control requests for the regions of its proc.

    Its endpoints are synchronous, so they run on the actor's own thread, never on the proc's
    event loop (queue-pair setup calls into the verbs driver).
    """

    def __init__(self) -> None:
        self.connects = 0
        self.drops = 0

    @endpoint
    def connect_qp(self, request: bytes) -> bytes:
        """Owner side of queue-pair setup: a QP connected to the reader's; returns its info.

        Args:
            request: the reader's QP number, PSN, GID and LID (JSON).

        Raises:
            RDMAUnavailableError: this proc has no ibverbs device.
        """
        from . import _ibverbs

        answer = _ibverbs.get_context().accept(request)
        self.connects += 1
        return answer

    @endpoint
    def drop(self, region_id: int, key: int) -> None:
        """Drop a region of this proc (``RDMABuffer.drop()`` from another process).

        Raises:
            RDMAError: ``key`` is not the region's key.
        """
        from ._engine import drop_local

        drop_local(region_id, key)
        self.drops += 1

    @endpoint
    def stats(self) -> dict[str, int]:
        """How many requests this manager answered: ``{"connects": n, "drops": n}``."""
        return {"connects": self.connects, "drops": self.drops}


def _runtime_running() -> bool:
    """Whether this process already runs the actor runtime (never starts it)."""
    return installed() is not None


def proc_tcp_host() -> str | None:
    """The host part of this proc's own address when it runs the actor runtime over TCP, else None.

    Never starts the runtime. An agent's procs listen on the address their host is reached at,
    so this is where peers on other hosts can reach an RDMA server of this process too.
    """
    if not _runtime_running():
        return None
    addr = context().actor_instance.proc_addr
    if not addr.startswith("tcp:"):
        return None
    return str(parse_address(addr)[1][0])


_lock = threading.Lock()
_ref: bytes | None = None


def manager_ref(has_verbs: bool) -> bytes:
    """The reference of this proc's manager, spawned on first call; empty when there is none.

    Runs in the owner when it registers memory (any thread, the event loop included: spawning
    returns at once).

    Args:
        has_verbs: this process registers ibverbs memory regions.
    """
    global _ref
    mode = current().control
    if mode == "tcp" or (mode == "auto" and not has_verbs) or not _runtime_running():
        return b""
    with _lock:
        if _ref is None:
            try:
                # Python-path actors come back as an ActorMesh (typed as the class, as Monarch)
                mesh = cast(ActorMesh[Any], this_proc().spawn("rdma_manager", RDMAManager))
                _ref = pickle.dumps(mesh)  # an ActorMesh pickles by reference
            except Exception as exc:  # the TCP server answers instead
                logger.warning("RDMA manager actor not started (%s); using the TCP server", exc)
                _ref = b""
        return _ref


def _reset_after_fork() -> None:
    global _ref
    _ref = None


os.register_at_fork(after_in_child=_reset_after_fork)


def manager_of(desc: Descriptor) -> ActorMesh[RDMAManager] | None:
    """The manager named in ``desc``, if the reader can reach it (its runtime is running)."""
    if not desc.manager or not _runtime_running():
        return None
    mesh: ActorMesh[RDMAManager] = pickle.loads(desc.manager)  # made by manager_ref in a peer proc
    return mesh


def control_via_manager(desc: Descriptor, name: str, args: tuple[Any, ...], deadline: float) -> Any:
    """Call endpoint ``name`` of ``desc``'s manager and wait for the answer.

    Runs on an RDMA worker thread or a caller's thread, never on an event loop.

    Raises:
        ManagerGone: the manager is stopped or its proc died (callers fall back to the TCP
            server, which fails in turn if the owner is gone).
        RDMAError: the manager refused (its error's message) or did not answer before
            ``deadline``.
    """
    mesh = manager_of(desc)
    assert mesh is not None
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise RDMAError(f"RDMA {name} with {desc.owner} timed out")
    try:
        return getattr(mesh, name).call_one(*args).get(timeout=remaining)
    except ActorError as exc:
        cause = exc.exception
        if isinstance(cause, RDMAError):
            raise cause from exc
        raise RDMAError(f"RDMA {name} refused by {desc.owner}: {cause}") from exc
    except SupervisionError as exc:
        raise ManagerGone(f"RDMA manager of {desc.owner} is gone: {exc}") from exc
    except (CallTimeout, TimeoutError) as exc:
        raise RDMAError(f"RDMA {name} with {desc.owner} timed out: {exc}") from exc
