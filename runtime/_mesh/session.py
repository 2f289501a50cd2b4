"""The process's session with its job, around the meshes: how it joins and how it ends.

Monarch's module-level functions: :func:`enable_transport` (where this client listens),
:func:`attach_to_workers` and :func:`hosts_from_config` (the host agents, possibly on other
machines, that a :class:`~monarch._mesh.proc_mesh.HostMesh` spawns procs on), and
:func:`shutdown_context` (the end of this process's runtime). They are user-facing, so they find
the process's runtime through :mod:`monarch._mesh.current`.
"""

from __future__ import annotations

import os
import socket
import threading
from typing import Any

from .._core.future import Future
from .._core.shape import Shape
from .._transport.address import from_url
from . import current
from .current import current_runtime
from .proc_mesh import HostMesh

__all__ = ["attach_to_workers", "enable_transport", "hosts_from_config", "shutdown_context"]


def enable_transport(transport: Any) -> None:
    """Choose where this client listens (Monarch's ``enable_transport``); call it before the
    first use of the runtime. ``"tcp://HOST:PORT"`` (port 0 picks one) or ``"tcp:HOST:PORT"``:
    there, so that procs on other machines can reach the client; ``"tcp"`` or
    ``ChannelTransport.TcpWithHostname``: this machine's hostname's address; ``"tcp-localhost"``
    or ``ChannelTransport.TcpWithLocalhost``: 127.0.0.1; ``"unix"``/``"ipc"`` or
    ``ChannelTransport.Unix``: a Unix socket (the default: procs of this machine only).

    Raises:
        ValueError: an unknown transport.
        RuntimeError: the runtime already started on another kind of address.
    """
    from .host_client import set_requested_listen  # not at import: monarch.actor stays light

    name = getattr(transport, "name", transport)
    if not isinstance(name, str):
        raise ValueError(f"enable_transport: unknown transport {transport!r}")
    key = name.strip()
    if key.lower() in ("unix", "ipc"):
        addr = None
    elif key.lower() in ("tcp", "tcpwithhostname"):
        addr = f"tcp:{socket.gethostbyname(socket.gethostname())}:0"
    elif key.lower() in ("tcp-localhost", "tcpwithlocalhost"):
        addr = "tcp:127.0.0.1:0"
    elif key.startswith(("tcp:", "tcp://")):
        addr = from_url(key)
    else:
        raise ValueError(
            f"enable_transport: unsupported transport {transport!r} (tcp://HOST:PORT, tcp, unix)"
        )
    rt = current.installed()
    if rt is not None:
        kind = "tcp:" if addr else "unix:"
        if not rt.router.addr.startswith(kind):
            raise RuntimeError(
                f"enable_transport({transport!r}): the runtime already listens on {rt.router.addr}; "
                "call enable_transport before the first spawn or attach"
            )
        return
    if addr is not None:
        set_requested_listen(addr)


def attach_to_workers(
    *, workers: Any, ca: Any = None, private_key: Any = None, name: str | None = None
) -> HostMesh:
    """A HostMesh of the host agents at ``workers`` (Monarch's ``attach_to_workers``), extent
    ``{"hosts": N}``; returns at once while the agents are reached in the background
    (``await hm.initialized`` / ``hm.initialized.get()`` waits for all).

    Each agent is authenticated with the cluster token (``MONARCH_CLUSTER_TOKEN``, or a token
    in ``monarch.config``) and proves it knows it; with TLS files, every TCP link of the job
    (to the agents, to the procs, between procs) also runs over mutual TLS. If the client runtime has not started and
    :func:`enable_transport` was not called, the client listens on TCP on its address on the
    route to the first agent, so that the agents' procs can reach it.

    Args:
        workers: agent addresses (``tcp://HOST:PORT``; ``ipc://PATH`` for an agent of this
            machine on a Unix socket), or futures of them (waited for here). An agent not yet
            listening is dialed again until ``mesh_attach_config_timeout`` (Monarch's knob,
            default ``"1m"``) has passed; then ``initialized`` fails naming it.
        ca: the CA bundle (a path, or PEM bytes) the agents' and procs' certificates must be
            signed by; None or ``"trust_all_connections"``: no files given here
            (``MONARCH_TLS_*`` applies when set, else the cluster token alone).
        private_key: with ``ca``: this client's private key and certificate chain (signed by
            the same CA), one PEM file (a path or bytes) or a ``(certificate, key)`` pair.
        name: accepted for compatibility (reports name hosts by hostname).

    Raises:
        ValueError: no workers, a malformed address, ``ca`` without ``private_key`` (or the
            reverse), or a missing or invalid TLS file.
        RuntimeError: the runtime already listens on a Unix socket only (call
            ``enable_transport("tcp://ADDR:0")`` first), or it already runs with other TLS files.
    """
    from .._transport.tls import tls_from_monarch
    from .host_client import local_address_towards, requested_listen, set_requested_listen

    tls = tls_from_monarch(ca, private_key)
    if tls is not None and current.installed() is None:
        os.environ.update(tls.env())  # the client's transport and every proc started here use them
    # an alias DIAL_TO@BIND_TO (Monarch's) is dialed at DIAL_TO
    addrs = [from_url(_dial_part(w.get(60.0) if isinstance(w, Future) else str(w))) for w in workers]
    if not addrs:
        raise ValueError("attach_to_workers: workers is empty")
    tcp = [a for a in addrs if a.startswith("tcp:")]
    if tcp and current.installed() is None and requested_listen() is None:
        set_requested_listen(f"tcp:{local_address_towards(tcp[0])}:0")
    rt = current_runtime()
    # agents on this machine's Unix sockets (ipc://) reach a client on its Unix socket
    if tcp and not rt.router.addr.startswith("tcp:"):
        raise RuntimeError(
            f"attach_to_workers: this client listens on {rt.router.addr}, which other machines cannot reach; "
            'call enable_transport("tcp://ADDR:0") before the first spawn'
        )
    if tls is not None and getattr(rt.router.transport, "tls", None) != tls:
        raise RuntimeError(
            f"attach_to_workers: this client's runtime started without these TLS files ({tls}); pass ca/private_key "
            "to the first attach_to_workers, or set MONARCH_TLS_CA / MONARCH_TLS_CERT / MONARCH_TLS_KEY, before the first spawn"
        )
    for a in addrs:
        rt.remote.attach(a)
    return HostMesh(Shape(["hosts"], 0, [len(addrs)]), addrs, agents=addrs)


def _dial_part(address: str) -> str:
    from .._transport.address import split_alias

    bind, dial = split_alias(address)
    return dial or bind


def hosts_from_config(name: str = "MONARCH_HOSTS") -> HostMesh:
    """The job's hosts, from the environment variable ``name`` (Monarch's ``hosts_from_config``).

    The variable holds a comma-separated list of host agents' addresses (``tcp://HOST:PORT``:
    the mesh attaches to them, as :func:`attach_to_workers`), or of host names, or a count: then
    every host of the mesh is this machine, so code written for several hosts runs here
    unchanged (extent ``{"hosts": N}``; N is 1 when unset).

    Raises:
        ValueError: the variable is neither a count nor a list.
    """
    if name == "MONARCH_HOSTS":
        from ..config import get_global_config  # the documented setting (configure() included)

        raw = get_global_config().hosts.strip()
    else:
        raw = os.environ.get(name, "").strip()
    if not raw:
        hosts = ["local"]
    elif raw.isdigit():
        hosts = ["local"] * max(1, int(raw))
    else:
        hosts = [h.strip() for h in raw.split(",") if h.strip()]
        if not hosts:
            raise ValueError(f"{name}={raw!r} names no hosts")
        if all(h.startswith(("tcp://", "tcp:")) for h in hosts):
            return attach_to_workers(workers=hosts, ca=None)
    return HostMesh(Shape(["hosts"], 0, [len(hosts)]), hosts)


_shutdown_lock = threading.Lock()
_shutdown: Future[None] | None = None


def shutdown_context() -> Future[None]:
    """Stop this process's runtime (Monarch's ``shutdown_context``): every proc this process
    started is stopped (their actors run ``__cleanup__``; stragglers are killed after 3 s), then
    its event loop and its connections end. The same runs at interpreter exit anyway.

    Idempotent: every later call returns a completed future (or, while the first is still
    stopping, that same future). With no runtime started yet it starts none and returns a
    completed future. After shutdown this process cannot use Monarch again (as in Monarch).
    Callable from any thread, inside actors too (the stop runs on a helper thread).

    Returns:
        A future that completes (with None) when the shutdown has finished.
    """
    global _shutdown
    with _shutdown_lock:
        if _shutdown is not None:
            return Future.completed(None) if _shutdown.done() else _shutdown
        rt = current.installed()
        if rt is None:
            return Future.completed(None)
        fut: Future[None] = Future()
        _shutdown = fut

    def run() -> None:
        try:
            rt.shutdown()
        except BaseException as exc:
            fut.set_exception(exc)
        else:
            fut.set_result(None)

    threading.Thread(target=run, name="monarch shutdown_context", daemon=True).start()
    return fut
