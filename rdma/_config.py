"""Run-time configuration of ``monarch.rdma``: which backend to use and where the TCP server binds.

Settings come from the environment when first read and can be overridden in code with
:func:`configure`. Environment variables (all optional):

- ``MONARCH_RDMA_BACKEND``: ``auto`` (default), ``ibverbs``, ``cma`` or ``tcp``. Anything but
  ``auto`` forces that backend for every transfer; a forced backend that cannot serve a transfer
  raises :class:`~monarch._core.errors.RDMAUnavailableError` (never a silent fallback).
- ``MONARCH_RDMA_TCP_HOST``: address the per-proc RDMA TCP server binds and advertises
  (default ``127.0.0.1``; in a proc that the runtime runs over TCP, such as one a host agent
  started, the default becomes the host of the proc's own address, so other hosts reach it).
- ``MONARCH_RDMA_IB_DEVICE``: verbs device name (default: the first one found).
- ``MONARCH_RDMA_IB_GID_INDEX``: GID index (default: the first IPv4-mapped GID, else 0).
- ``MONARCH_RDMA_DROP_GRACE_S``: seconds a dropped region's memory is kept alive for transfers
  that passed their checks just before the drop (default 5).
- ``MONARCH_RDMA_CONTROL``: where an owner inside the actor runtime answers control requests
  (ibverbs queue-pair setup, remote drops): ``auto`` (default: its proc's RDMA manager actor
  when it has an ibverbs device, else its TCP server), ``actor`` (always the manager actor) or
  ``tcp`` (always the TCP server). See :mod:`monarch.rdma._manager`.
- ``MONARCH_RDMA_TCP_MAX_CONNECTIONS``: connections the owner's RDMA TCP server serves at once;
  one more is refused with an error and closed (default 512).
- ``MONARCH_RDMA_TCP_IDLE_TIMEOUT_S``: seconds a server connection may stay silent (between
  requests or inside a transfer) before the server closes it; pooled client connections are
  not reused past it either (default 60).
- ``MONARCH_RDMA_TCP_MAX_REQUEST_BYTES``: largest control request (and control answer or error
  message) in bytes; a larger one closes the connection (default 65536).
- ``MONARCH_RDMA_CMA_PTRACER``: which processes an owner lets attach with ``process_vm_readv``
  where the kernel's Yama ``ptrace_scope`` is 1 (see :mod:`monarch.rdma._cma`): ``0`` (default)
  the job's root process and its descendants, a pid for that process and its descendants, ``-1``
  no declaration (only ancestors attach; others fall back to ``tcp``).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace

__all__ = ["BACKENDS", "CONTROLS", "RDMAConfig", "configure", "current"]

BACKENDS = ("auto", "ibverbs", "cma", "tcp")
CONTROLS = ("auto", "actor", "tcp")


@dataclass(frozen=True)
class RDMAConfig:
    """A snapshot of the RDMA settings of this process.

    Attributes:
        backend: ``auto``, ``ibverbs``, ``cma`` or ``tcp``.
        tcp_host: address the TCP server binds and advertises.
        ib_device: verbs device name; empty means the first device.
        ib_gid_index: GID index; -1 means the first IPv4-mapped GID, else 0.
        drop_grace_s: seconds a dropped region's memory stays alive, in seconds.
        control: ``auto``, ``actor`` or ``tcp``: see ``MONARCH_RDMA_CONTROL``.
        tcp_max_connections: connections the RDMA TCP server serves at once.
        tcp_idle_timeout_s: seconds a server connection may stay silent, in seconds.
        tcp_max_request_bytes: largest control request, answer or error message, in bytes.
        cma_ptracer: 0 = the job's root, a pid, or -1 = none: see ``MONARCH_RDMA_CMA_PTRACER``.
    """

    backend: str = "auto"
    tcp_host: str = "127.0.0.1"
    ib_device: str = ""
    ib_gid_index: int = -1
    drop_grace_s: float = 5.0
    control: str = "auto"
    tcp_max_connections: int = 512
    tcp_idle_timeout_s: float = 60.0
    tcp_max_request_bytes: int = 1 << 16
    cma_ptracer: int = 0


def _from_env() -> RDMAConfig:
    """The RDMA settings of ``monarch.config`` (environment ``MONARCH_RDMA_*``, ``configure()``).

    Raises:
        monarch.config.ConfigError: a ``MONARCH_RDMA_*`` variable holds a bad value.
    """
    from monarch.config import get_global_config

    cfg = get_global_config()
    return RDMAConfig(
        backend=cfg.rdma_backend,
        tcp_host=cfg.rdma_tcp_host,
        ib_device=cfg.rdma_ib_device,
        ib_gid_index=cfg.rdma_ib_gid_index,
        drop_grace_s=cfg.rdma_drop_grace_s,
        control=cfg.rdma_control,
        tcp_max_connections=cfg.rdma_tcp_max_connections,
        tcp_idle_timeout_s=cfg.rdma_tcp_idle_timeout_s,
        tcp_max_request_bytes=cfg.rdma_tcp_max_request_bytes,
        cma_ptracer=cfg.rdma_cma_ptracer,
    )


_lock = threading.Lock()
_config: RDMAConfig | None = None


def current() -> RDMAConfig:
    """The settings in force in this process (read from the environment on first use)."""
    global _config
    with _lock:
        if _config is None:
            _config = _from_env()
        return _config


def configure(
    *,
    backend: str | None = None,
    tcp_host: str | None = None,
    ib_device: str | None = None,
    ib_gid_index: int | None = None,
    drop_grace_s: float | None = None,
    control: str | None = None,
    tcp_max_connections: int | None = None,
    tcp_idle_timeout_s: float | None = None,
    tcp_max_request_bytes: int | None = None,
    cma_ptracer: int | None = None,
) -> RDMAConfig:
    """Override RDMA settings in this process; ``None`` keeps the current value.

    Settings are per process: call this in the process that transfers (the reader or writer)
    for ``backend``, and in the owner before its first registration for ``tcp_host`` and the
    verbs device.

    Args:
        backend: ``auto``, ``ibverbs``, ``cma`` or ``tcp``.
        tcp_host: address for the RDMA TCP server to bind and advertise.
        ib_device: verbs device name, e.g. ``mlx5_0`` or ``rxe0``.
        ib_gid_index: GID index on port 1; -1 picks the first IPv4-mapped GID.
        drop_grace_s: seconds dropped memory stays alive for in-flight transfers.
        control: ``auto``, ``actor`` or ``tcp``: where this process, as an owner, answers
            control requests (set it before the first registration).
        tcp_max_connections: connections this process's RDMA TCP server serves at once (>= 1);
            applies to connections accepted from now on.
        tcp_idle_timeout_s: seconds (> 0) a server connection may stay silent; applies to
            connections accepted from now on.
        tcp_max_request_bytes: largest control request, answer or error message (>= 1024).
        cma_ptracer: 0, a pid, or -1: see ``MONARCH_RDMA_CMA_PTRACER`` (set it before the
            first registration).

    Returns:
        The new settings.

    Raises:
        ValueError: ``backend`` or ``control`` is not one of the names above, or a bound is
            out of range.
    """
    global _config
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"backend={backend!r}: expected one of {BACKENDS}")
    if control is not None and control not in CONTROLS:
        raise ValueError(f"control={control!r}: expected one of {CONTROLS}")
    if tcp_max_connections is not None and tcp_max_connections < 1:
        raise ValueError(f"tcp_max_connections={tcp_max_connections!r}: expected >= 1")
    if tcp_idle_timeout_s is not None and not tcp_idle_timeout_s > 0:
        raise ValueError(f"tcp_idle_timeout_s={tcp_idle_timeout_s!r}: expected > 0 seconds")
    if tcp_max_request_bytes is not None and tcp_max_request_bytes < 1024:
        raise ValueError(f"tcp_max_request_bytes={tcp_max_request_bytes!r}: expected >= 1024")
    if cma_ptracer is not None and cma_ptracer < -1:
        raise ValueError(f"cma_ptracer={cma_ptracer!r}: expected -1, 0 or a pid")
    cfg = current()
    changes: dict[str, object] = {}
    for name, value in (
        ("backend", backend),
        ("tcp_host", tcp_host),
        ("ib_device", ib_device),
        ("ib_gid_index", ib_gid_index),
        ("drop_grace_s", drop_grace_s),
        ("control", control),
        ("tcp_max_connections", tcp_max_connections),
        ("tcp_idle_timeout_s", tcp_idle_timeout_s),
        ("tcp_max_request_bytes", tcp_max_request_bytes),
        ("cma_ptracer", cma_ptracer),
    ):
        if value is not None:
            changes[name] = value
    with _lock:
        _config = replace(cfg, **changes)  # type: ignore[arg-type]  # keys are the fields above
        return _config
