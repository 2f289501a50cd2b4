"""Monarch's worker bootstrap entry points (``monarch.actor.run_worker_loop_forever``,
``start_worker_loop_forever``): thin front doors to :mod:`monarch._mesh.host_agent`, imported on
call so that ``import monarch.actor`` loads no agent, socket or fork-server code."""

from __future__ import annotations

from typing import Any

from .._core.future import Future

__all__ = ["run_worker_loop_forever", "start_worker_loop_forever"]


def run_worker_loop_forever(*, address: str, ca: Any = None, private_key: Any = None, insecure: bool = False) -> None:
    """Serve this machine as a host agent until the process is killed (Monarch's
    ``run_worker_loop_forever``): clients ``attach_to_workers`` to it and spawn procs here.

    Args:
        address: ``tcp://HOST:PORT`` to listen on, or ``tcp://BIND:PORT@ADVERTISE_HOST``.
        ca: None or ``"trust_all_connections"``: clients are authenticated with the cluster
            token (``MONARCH_CLUSTER_TOKEN`` or ``monarch.config``); TLS files are not built yet.
        private_key: must be None (TLS is not built yet).
        insecure: serve with no cluster token (any client that can connect may start processes).

    Raises:
        InsecureAgentError: (a ``ValueError``) no cluster token and not ``insecure``.
        NotImplementedError: TLS files were given.
        ValueError: a malformed address.
        OSError: the address cannot be bound.
    """
    from .host_agent import run_worker_loop_forever as run

    run(address=address, ca=ca, private_key=private_key, insecure=insecure)


def start_worker_loop_forever(*, address: str, ca: Any = None, private_key: Any = None, insecure: bool = False) -> Future[str]:
    """Start a host agent on a daemon thread of this process (Monarch's
    ``start_worker_loop_forever``).

    Args:
        address, ca, private_key, insecure: as :func:`run_worker_loop_forever`.

    Returns:
        A future of the agent's bound address (``tcp:HOST:PORT``), set once clients can connect.

    Raises:
        InsecureAgentError: (a ``ValueError``) no cluster token and not ``insecure``.
        NotImplementedError: TLS files were given.
    """
    from .host_agent import start_worker_loop_forever as start

    return start(address=address, ca=ca, private_key=private_key, insecure=insecure)
