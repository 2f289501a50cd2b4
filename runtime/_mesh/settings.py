"""A process's runtime settings: :class:`RuntimeSettings`, resolved once from ``monarch.config``.

The composition root (:mod:`monarch._mesh.runtime`) and a proc's entry point (``proc_main``) call
:func:`settings_from_config` once, at start; nothing below them reads the environment for a
setting. A process on the defaults resolves them without importing ``monarch.config`` (see
:func:`settings_from_config`).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

from .._transport.base import TransportSettings
from .._transport.tls import TlsConfig, tls_from_env
from .router import RouterLimits

__all__ = ["RuntimeSettings", "default_transport_listen", "log_prefix_enabled", "settings_from_config"]


@dataclass(frozen=True)
class RuntimeSettings:
    """Everything a runtime is configured with, resolved once from ``monarch.config``.

    Attributes:
        transport: the socket transport's limits and timeouts.
        limits: bounds on what peers may make this process hold, and the liveness bound.
        use_fork_server: fork procs from a pre-imported fork server (root client only).
        log_level: the logging level a proc configures (``logging`` level name).
        prefix_logs_with_actor: procs prefix actor log lines with the actor's name.
        proc_stop_timeout_s: how long a stopped proc may take to exit before SIGKILL, seconds.
        heartbeat_interval_s: how often a proc tells its owner it is alive, seconds (None: never).
        child_env: the environment every child proc gets (the job's configuration, propagated).
        tls: mutual TLS files for every TCP link (``tls_ca``/``tls_cert``/``tls_key``); None: off.
        admin: the root client serves the admin endpoint (``monarch status``, ...).
    """

    transport: TransportSettings = field(default_factory=TransportSettings)
    limits: RouterLimits = field(default_factory=RouterLimits)
    use_fork_server: bool = True
    log_level: str = "WARNING"
    prefix_logs_with_actor: bool = True
    proc_stop_timeout_s: float = 5.0
    heartbeat_interval_s: float | None = 0.75
    child_env: dict[str, str] = field(default_factory=dict)
    tls: TlsConfig | None = None
    admin: bool = True


# the environment variable of every setting of monarch.config (upper case: it reads them case
# insensitively), Monarch's knobs included, but the cluster token, which the fast path reads
# itself; a test keeps this equal to MonarchConfig's fields. Any other variable (the runtime's
# bootstrap, a MONARCH_* of the user's own) leaves a process on the defaults' fast path.
SETTING_VARIABLES = frozenset(
    {
        "HYPERACTOR_CHANNEL_NET_RX_BUFFER_FULL_CHECK_INTERVAL",
        "HYPERACTOR_CHANNEL_TCP_CONGESTION", "HYPERACTOR_CLEANUP_TIMEOUT",
        "HYPERACTOR_CODEC_MAX_FRAME_LENGTH", "HYPERACTOR_DEFAULT_ENCODING",
        "HYPERACTOR_ENABLE_DEST_ACTOR_REORDERING_BUFFER", "HYPERACTOR_FORCE_FILE_LOG",
        "HYPERACTOR_HOST_SPAWN_READY_TIMEOUT", "HYPERACTOR_MESH_ACTOR_SPAWN_MAX_IDLE",
        "HYPERACTOR_MESH_ADMIN_ADDR", "HYPERACTOR_MESH_ATTACH_CONFIG_TIMEOUT",
        "HYPERACTOR_MESH_BOOTSTRAP_ENABLE_PDEATHSIG", "HYPERACTOR_MESH_DEFAULT_TRANSPORT",
        "HYPERACTOR_MESH_ENABLE_FILE_CAPTURE", "HYPERACTOR_MESH_ENABLE_LOG_FORWARDING",
        "HYPERACTOR_MESH_GET_ACTOR_STATE_MAX_IDLE", "HYPERACTOR_MESH_GET_PROC_STATE_MAX_IDLE",
        "HYPERACTOR_MESH_MAX_CAST_DIMENSION_SIZE", "HYPERACTOR_MESH_ORPHAN_TIMEOUT",
        "HYPERACTOR_MESH_PROC_SPAWN_MAX_IDLE", "HYPERACTOR_MESH_PROC_STOP_MAX_IDLE",
        "HYPERACTOR_MESH_SUPERVISION_WATCHDOG_TIMEOUT", "HYPERACTOR_MESH_TAIL_LOG_LINES",
        "HYPERACTOR_MESH_TERMINATE_CONCURRENCY", "HYPERACTOR_MESH_TERMINATE_TIMEOUT",
        "HYPERACTOR_MESSAGE_ACK_EVERY_N_MESSAGES", "HYPERACTOR_MESSAGE_ACK_TIME_INTERVAL",
        "HYPERACTOR_MESSAGE_DELIVERY_TIMEOUT", "HYPERACTOR_MESSAGE_LATENCY_SAMPLING_RATE",
        "HYPERACTOR_MESSAGE_TTL_DEFAULT", "HYPERACTOR_PREFIX_WITH_RANK",
        "HYPERACTOR_PROCESS_EXIT_TIMEOUT", "HYPERACTOR_READ_LOG_BUFFER",
        "HYPERACTOR_SPLIT_MAX_BUFFER_AGE", "HYPERACTOR_SPLIT_MAX_BUFFER_SIZE",
        "HYPERACTOR_STOP_ACTOR_TIMEOUT", "MONARCH_ADMIN", "MONARCH_CALL_TIMEOUT_S",
        "MONARCH_CAPTURE_FRAMES_DIR", "MONARCH_CONNECT_TIMEOUT_S",
        "MONARCH_HOSTS", "MONARCH_HYPERACTOR_SMALL_WRITE_THRESHOLD", "MONARCH_LOG_LEVEL",
        "MONARCH_MAX_CONNECTIONS", "MONARCH_MAX_ENVELOPE_BYTES", "MONARCH_MAX_FRAME_BYTES",
        "MONARCH_MAX_HELD_BYTES", "MONARCH_MAX_HELD_FRAMES", "MONARCH_PEER_TIMEOUT_S",
        "MONARCH_PREFIX_PYTHON_LOGS_WITH_ACTOR", "MONARCH_PROC_STOP_TIMEOUT_S",
        "MONARCH_RDMA_ALLOW_TCP_FALLBACK", "MONARCH_RDMA_BACKEND", "MONARCH_RDMA_CMA_PTRACER",
        "MONARCH_RDMA_CONTROL", "MONARCH_RDMA_DISABLE_IBVERBS", "MONARCH_RDMA_DROP_GRACE_S",
        "MONARCH_RDMA_IBVERBS_TARGET", "MONARCH_RDMA_IB_DEVICE", "MONARCH_RDMA_IB_GID_INDEX",
        "MONARCH_RDMA_MAX_CHUNK_SIZE_MB", "MONARCH_RDMA_PEER_DEVICE_AFFINITY",
        "MONARCH_RDMA_RUNTIME_WORKER_THREADS", "MONARCH_RDMA_TCP_HOST",
        "MONARCH_RDMA_TCP_IDLE_TIMEOUT_S", "MONARCH_RDMA_TCP_MAX_CONNECTIONS",
        "MONARCH_RDMA_TCP_MAX_REQUEST_BYTES", "MONARCH_SHM", "MONARCH_SHM_MIN_BYTES",
        "MONARCH_SHM_POOL_MAX_BYTES", "MONARCH_SPAWN_TIMEOUT_S",
        "MONARCH_TENSOR_COLLECTIVE_TIMEOUT_S", "MONARCH_TENSOR_STORE_HOST", "MONARCH_TLS_CA",
        "MONARCH_TLS_CERT", "MONARCH_TLS_KEY", "MONARCH_ZYGOTE"
    }
)  # fmt: skip


def settings_from_config() -> tuple[RuntimeSettings, bytes | None]:
    """This process's :class:`RuntimeSettings` and cluster token, from ``monarch.config``.

    A process whose environment sets no setting (none of :data:`SETTING_VARIABLES`: only the
    runtime's bootstrap variables, the cluster token or variables of its own, as every proc of
    a job left on the defaults has) and that has
    not imported ``monarch.config`` (so has called no ``configure()``) runs on the defaults: it
    gets ``RuntimeSettings()`` without importing pydantic-settings (~0.1 s, and ~13,000 objects
    that every full garbage collection would walk). A test keeps those defaults equal to
    ``MonarchConfig``'s; children inherit the same environment and so read the same defaults.
    """
    if "monarch.config" not in sys.modules and not any(k.upper() in SETTING_VARIABLES for k in os.environ):
        raw = os.environ.get("MONARCH_CLUSTER_TOKEN")  # empty counts as unset, as in monarch.config
        return RuntimeSettings(), raw.encode() if raw else None
    from ..config import get_global_config, to_env

    cfg = get_global_config()
    # Monarch's codec_max_frame_length bounds a whole message; max_frame_bytes is ours
    frame_limit = min(cfg.max_frame_bytes, cfg.codec_max_frame_length)
    limits = RouterLimits(
        max_envelope_bytes=min(cfg.max_envelope_bytes, frame_limit),
        max_frame_bytes=frame_limit,
        max_held_frames=cfg.max_held_frames,
        max_held_bytes=cfg.max_held_bytes,
        peer_timeout_s=cfg.peer_timeout_s,
        start_timeout_s=cfg.spawn_timeout_s,
    )
    transport = TransportSettings(
        peer_timeout_s=cfg.peer_timeout_s,
        connect_timeout_s=cfg.connect_timeout_s,
        max_envelope_bytes=min(cfg.max_envelope_bytes, frame_limit),
        max_frame_bytes=frame_limit,
        max_connections=cfg.max_connections,
        shm_enabled=cfg.shm,
        shm_min_bytes=cfg.shm_min_bytes,
        shm_pool_keep_bytes=cfg.shm_pool_max_bytes,
        capture_frames_dir=cfg.capture_frames_dir,
    )
    settings = RuntimeSettings(
        transport=transport,
        limits=limits,
        use_fork_server=cfg.zygote,
        log_level=cfg.log_level,
        prefix_logs_with_actor=cfg.prefix_python_logs_with_actor,
        proc_stop_timeout_s=cfg.proc_stop_timeout_s,
        heartbeat_interval_s=cfg.peer_timeout_s / 4 if cfg.peer_timeout_s else None,
        child_env={k: v for k, v in to_env(cfg).items() if k != "MONARCH_CLUSTER_TOKEN"},
        tls=_tls(cfg.tls_ca, cfg.tls_cert, cfg.tls_key),
        admin=cfg.admin,
    )
    token = cfg.cluster_token.get_secret_value().encode() if cfg.cluster_token is not None else None
    return settings, token


def _tls(ca: str | None, cert: str | None, key: str | None) -> TlsConfig | None:
    if ca is None and cert is None and key is None:
        # the variables as they are now: attach_to_workers(ca=, private_key=) sets them before
        # the client runtime starts, possibly after monarch.config was first read
        return tls_from_env()
    if ca is None or cert is None:
        from ..config import ConfigError

        raise ConfigError(
            "mutual TLS needs both tls_ca and tls_cert (and tls_key unless tls_cert holds the key)"
        )
    return TlsConfig(ca, cert, key)


def log_prefix_enabled(settings: RuntimeSettings) -> Callable[[], bool]:
    """Whether log records get the actor prefix now: ``monarch.config``'s
    ``prefix_python_logs_with_actor`` once that module is in use (it may change at run time,
    e.g. ``monarch.config.prefix_python_logs_with_actor = False``), else the start-up setting."""
    default = settings.prefix_logs_with_actor

    def enabled() -> bool:
        cfg = sys.modules.get("monarch.config")
        return (
            default if cfg is None else bool(cfg.get_global_config().prefix_python_logs_with_actor)
        )

    return enabled


def default_transport_listen() -> str | None:
    """Where a client listens by Monarch's ``default_transport`` knob: None for Unix (the
    default), ``tcp:HOST:0`` or the explicit ``tcp:HOST:PORT`` otherwise. A process that has not
    imported ``monarch.config`` and has no ``HYPERACTOR_MESH_DEFAULT_TRANSPORT`` is on the default.

    Raises:
        ConfigError: a transport this runtime cannot listen on (Tls, Quic, Local, ...).
    """
    if "monarch.config" not in sys.modules and "HYPERACTOR_MESH_DEFAULT_TRANSPORT" not in os.environ:
        return None
    import socket

    from .._transport.address import from_url
    from ..config import ChannelTransport, ConfigError, get_global_config

    value = get_global_config().default_transport
    if value is ChannelTransport.Unix:
        return None
    if value is ChannelTransport.TcpWithLocalhost:
        return "tcp:127.0.0.1:0"
    if value is ChannelTransport.TcpWithHostname:
        return f"tcp:{socket.gethostbyname(socket.gethostname())}:0"
    if isinstance(value, str):
        return from_url(value)
    raise ConfigError(
        f"default_transport={value!r} is not supported here: use ChannelTransport.Unix, "
        "TcpWithLocalhost, TcpWithHostname or tcp://HOST:PORT"
    )
