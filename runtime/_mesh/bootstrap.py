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
        address: ``tcp://HOST:PORT`` to listen on, Monarch's alias
            ``tcp://ADVERTISE:PORT@tcp://BIND:PORT``, ``tcp://HOST:fdN`` (an inherited
            listening socket) or ``ipc://PATH`` (a Unix socket; see ``HostAgent``).
        ca: the CA bundle (a path, or PEM bytes) every client's certificate must be signed by
            (mutual TLS); None or ``"trust_all_connections"``: no files given here
            (``MONARCH_TLS_*`` applies when set; clients are authenticated with the cluster
            token, ``MONARCH_CLUSTER_TOKEN`` or ``monarch.config``, inside TLS when both are set).
        private_key: with ``ca``: this host's private key and certificate chain, one PEM file (a
            path or bytes) or a ``(certificate, key)`` pair; procs started here present it too.
        insecure: serve with neither a cluster token nor TLS (any client that can connect may
            start processes).

    Raises:
        InsecureAgentError: (a ``ValueError``) neither a cluster token nor TLS, and not ``insecure``.
        ValueError: a malformed address, ``ca`` without ``private_key`` (or the reverse), or a
            missing or invalid TLS file.
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
        InsecureAgentError: (a ``ValueError``) neither a cluster token nor TLS, and not ``insecure``.
        ValueError: as :func:`run_worker_loop_forever`.
    """
    from .host_agent import start_worker_loop_forever as start

    return start(address=address, ca=ca, private_key=private_key, insecure=insecure)
