"""Monarch's own configuration knobs, under Monarch's names (a base of ``MonarchConfig``).

Monarch's ``monarch.config.configure`` takes the knobs of its Rust runtime (hyperactor): names
such as ``message_delivery_timeout`` or ``codec_max_frame_length``, durations written in the
humantime format (``"30s"``, ``"1h 30m"``), and environment variables such as
``HYPERACTOR_MESSAGE_DELIVERY_TIMEOUT``. Programs and tests written for Monarch set and read them
(``get_global_config()["tail_log_lines"]``), so this project accepts every knob that Monarch's
``configure`` documents and that its runtime declares, with Monarch's type, default,
environment variable, validation and read-back form (``default_transport`` reads back as a
:class:`ChannelTransport` member or its explicit address, not Monarch's private ``BindSpec``).

Most of them configure machinery this runtime does not have (acknowledgements, message TTLs,
Monarch's admin server, its ibverbs device selection): those are accepted and read back, and
change nothing here. Each field's description starts with what it does HERE: ``Honoured:`` or
``Accepted, no effect:`` and why. The table in ``docs/configuration.md`` prints exactly that.

Stdlib and pydantic only (layer 1, with :mod:`monarch.config`).
"""

from __future__ import annotations

import enum
import re
from typing import Annotated, Any

from pydantic import AfterValidator, Field, field_validator
from pydantic_settings import BaseSettings

__all__ = [
    "KNOB_EFFECT",
    "ChannelTransport",
    "Encoding",
    "MonarchKnobs",
    "format_duration",
    "parse_duration",
]

_NS = 1_000_000_000
# humantime's units (Monarch formats and parses durations with the humantime crate); a month is
# 30.44 days and a year 365.25 days there, and unit names are case-sensitive ("M" is a month)
_UNITS_NS: dict[str, int] = {}
for _names, _ns in (
    (("nanos", "nsec", "ns"), 1),
    (("usec", "us", "\u00b5s"), 1_000),
    (("millis", "msec", "ms"), 1_000_000),
    (("seconds", "second", "secs", "sec", "s"), _NS),
    (("minutes", "minute", "min", "mins", "m"), 60 * _NS),
    (("hours", "hour", "hr", "hrs", "h"), 3600 * _NS),
    (("days", "day", "d"), 86400 * _NS),
    (("weeks", "week", "wk", "wks", "w"), 604800 * _NS),
    (("months", "month", "M"), 2_630_016 * _NS),
    (("years", "year", "yr", "yrs", "y"), 31_557_600 * _NS),
):
    for _name in _names:
        _UNITS_NS[_name] = _ns
_TOKEN = re.compile(r"\s*(\d+)\s*([^\d\s]*)")


def parse_duration(text: str) -> int:
    """Parse a humantime duration (``"30s"``, ``"1h 30m"``, ``"1h30m"``, ``"500ms"``) into
    nanoseconds, as Monarch's config does.

    Args:
        text: one or more ``<integer><unit>`` parts, optionally separated by spaces; units as
            humantime's (``ns us ms s m h d w M y`` and their long forms).

    Returns:
        The duration in nanoseconds (an int >= 0).

    Raises:
        ValueError: ``Invalid duration format '<text>': <why>`` (empty, a number without a
            unit, an unknown unit, a part that is not a number).
    """
    if not text.strip():
        raise ValueError(f"Invalid duration format {text!r}: value was empty")
    total, pos = 0, 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = _TOKEN.match(text, pos)
        if m is None:
            raise ValueError(f"Invalid duration format {text!r}: expected number at {pos}")
        number, unit = m.groups()
        if not unit:
            raise ValueError(
                f"Invalid duration format {text!r}: time unit needed, for example {number}sec or {number}ms"
            )
        if unit not in _UNITS_NS:
            raise ValueError(f"Invalid duration format {text!r}: unknown time unit {unit!r}")
        total += int(number) * _UNITS_NS[unit]
        pos = m.end()
    return total


def format_duration(ns: int) -> str:
    """Write nanoseconds as humantime does (Monarch's read-back form): ``"1m 30s"``, ``"500ms"``,
    ``"2m"``, ``"0s"``; largest unit first, zero parts left out."""
    if ns == 0:
        return "0s"
    secs, nanos = divmod(ns, _NS)
    years, rest = divmod(secs, 31_557_600)
    months, rest = divmod(rest, 2_630_016)
    days, rest = divmod(rest, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    parts = [
        f"{n}{word}{'s' if n > 1 else ''}"
        for n, word in ((years, "year"), (months, "month"), (days, "day"))
        if n
    ]
    parts += [
        f"{n}{unit}"
        for n, unit in (
            (hours, "h"),
            (minutes, "m"),
            (seconds, "s"),
            (nanos // 1_000_000, "ms"),
            (nanos // 1000 % 1000, "us"),
            (nanos % 1000, "ns"),
        )
        if n
    ]
    return " ".join(parts)


def _normalize_duration(text: str) -> str:
    return format_duration(parse_duration(text))


HumanDuration = Annotated[str, AfterValidator(_normalize_duration)]
"""A duration in humantime form; stored and read back normalised (``"90s"`` reads ``"1m 30s"``)."""

_SOCKET_ADDR = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[0-9.]+):(\d{1,5})$")


def _check_socket_addr(text: str) -> str:
    m = _SOCKET_ADDR.match(text)
    if m is None or int(m.group(2)) > 65535:
        raise ValueError(f"{text!r} is not a socket address (IP:PORT, [IPv6]:PORT)")
    return text


class ChannelTransport(enum.Enum):
    """The kinds of channel Monarch's processes talk over (Monarch's ``ChannelTransport``, the
    same member names; picklable: a member unpickles to the same member).

    Supported here:

    - ``Unix``: Unix-domain sockets, between the processes of one machine (the default: every
      proc of a job on this host connects this way).
    - ``TcpWithLocalhost``: TCP on the loopback address (authenticated with the job's cluster
      token).
    - ``TcpWithHostname``: TCP on this machine's hostname, so other machines can connect
      (authenticated with the cluster token; peers on other machines need multi-host support).

    Named for compatibility with Monarch programs but NOT supported (nothing here can use them):
    ``Local`` (Monarch's in-process channel; our in-memory transport exists only in
    ``monarch.testing``), ``Tls``, ``MetaTlsWithHostname``, ``MetaTlsWithIpV6`` (as transports
    to select: here TLS is a property of every TCP link, turned on by the ``tls_ca``/``tls_cert``
    settings or ``attach_to_workers(ca=, private_key=)``), ``Quic``, ``MetaQuicWithHostname``,
    ``MetaQuicWithIpV6`` (QUIC).
    """

    Unix = "unix"
    TcpWithLocalhost = "tcp_localhost"
    TcpWithHostname = "tcp_hostname"
    Local = "local"
    Tls = "tls"
    MetaTlsWithHostname = "metatls_hostname"
    MetaTlsWithIpV6 = "metatls_ipv6"
    Quic = "quic"
    MetaQuicWithHostname = "metaquic_hostname"
    MetaQuicWithIpV6 = "metaquic_ipv6"

    @property
    def supported(self) -> bool:
        """Whether this project can carry messages over this transport."""
        return self in (
            ChannelTransport.Unix,
            ChannelTransport.TcpWithLocalhost,
            ChannelTransport.TcpWithHostname,
        )

    def __repr__(self) -> str:
        return f"ChannelTransport.{self.name}"


class Encoding(enum.Enum):
    """Monarch's message encodings (``monarch.config.Encoding``): the value of the
    ``default_encoding`` knob. The values are the names Monarch's ``HYPERACTOR_DEFAULT_ENCODING``
    takes. This runtime encodes Python payloads with pickle and IDL payloads with Cap'n Proto
    whatever the knob says."""

    Bincode = "bincode"
    Json = "serde_json"
    Multipart = "serde_multipart"

    def __repr__(self) -> str:
        return f"Encoding.{self.name}"


_TRANSPORT_NAMES = {
    "tcp": ChannelTransport.TcpWithHostname,
    "unix": ChannelTransport.Unix,
    "ipc": ChannelTransport.Unix,
    **{t.name.lower(): t for t in ChannelTransport},
    **{t.value: t for t in ChannelTransport},
}
_TCP_URL = re.compile(r"^tcp://(\[[0-9A-Fa-f:.]+\]|[^:/\[\]@]+):(\d{1,5})$")


def check_transport(value: ChannelTransport | str) -> ChannelTransport | str:
    """``default_transport`` as Monarch reads it: a member; a name (``"tcp"`` is
    ``TcpWithHostname``); or an explicit ``tcp://HOST:PORT`` kept as given.

    Raises:
        ValueError: a string that is neither (``"random_string"``, ``"invalid://scheme"``).
    """
    if isinstance(value, ChannelTransport):
        return value
    text = value.strip()
    named = _TRANSPORT_NAMES.get(text.lower())
    if named is not None:
        return named
    m = _TCP_URL.match(text)
    if m is None or int(m.group(2)) > 65535:
        raise ValueError(
            f"{value!r} is not a transport (a ChannelTransport, tcp, unix, or tcp://HOST:PORT)"
        )
    return text


_INERT = "Accepted, no effect: "
_GiB = 1 << 30


def _knob(default: Any, env: str, effect: str, meaning: str, **constraints: Any) -> Any:
    return Field(
        default,
        validation_alias=env,
        description=f"{effect} Monarch: {meaning}",
        json_schema_extra={"monarch_knob": True},
        **constraints,
    )


class MonarchKnobs(BaseSettings):
    """Monarch's knobs (see the module docstring); ``MonarchConfig`` adds this project's own
    settings. Each knob is read from Monarch's environment variable (``validation_alias``)."""

    # -- logging --------------------------------------------------------------------------------
    enable_log_forwarding: bool = _knob(
        False,
        "HYPERACTOR_MESH_ENABLE_LOG_FORWARDING",
        _INERT + "procs' output always reaches the client; ProcMesh.logging_option chooses how "
        "it shows there.",
        "forward child stdout/stderr through the mesh.",
    )
    enable_file_capture: bool = _knob(
        False,
        "HYPERACTOR_MESH_ENABLE_FILE_CAPTURE",
        _INERT + "every proc's output is always written to its log file on its host.",
        "persist child stdout/stderr to per-host files.",
    )
    tail_log_lines: int = _knob(
        0,
        "HYPERACTOR_MESH_TAIL_LOG_LINES",
        _INERT + "a failed proc's error quotes the last lines of its log file whatever this says.",
        "number of log lines to retain in memory.",
        ge=0,
    )
    read_log_buffer: int = _knob(
        100,
        "HYPERACTOR_READ_LOG_BUFFER",
        _INERT + "no such buffer here.",
        "buffer size for reading logs.",
        ge=0,
    )
    force_file_log: bool = _knob(
        False,
        "HYPERACTOR_FORCE_FILE_LOG",
        _INERT + "procs always log to their file.",
        "force file-based logging regardless of environment.",
    )
    prefix_with_rank: bool = _knob(
        True,
        "HYPERACTOR_PREFIX_WITH_RANK",
        _INERT + "lines printed at the client always start with [host rank=R pid=P].",
        "prefix log lines with rank information.",
    )

    # -- messages -------------------------------------------------------------------------------
    codec_max_frame_length: int = _knob(
        10 * _GiB,
        "HYPERACTOR_CODEC_MAX_FRAME_LENGTH",
        "Honoured: a message whose frame (envelope plus out-of-band buffers) is larger is not "
        "sent: the send raises SupervisionError (a call's caller gets it; a result too large "
        "reaches its caller as that error); a larger frame received closes the link. The bound "
        "in force is the smaller of this and max_frame_bytes.",
        "maximum serialized message size in bytes.",
        ge=1,
    )
    message_delivery_timeout: HumanDuration = _knob(
        "30s",
        "HYPERACTOR_MESSAGE_DELIVERY_TIMEOUT",
        _INERT + "messages here are not acknowledged; a lost peer is found by connection loss "
        "and peer_timeout_s, a slow reply bounded by call_timeout_s.",
        "max time for a message to be delivered (humantime).",
    )
    message_ack_time_interval: HumanDuration = _knob(
        "500ms",
        "HYPERACTOR_MESSAGE_ACK_TIME_INTERVAL",
        _INERT + "no message acknowledgements here.",
        "time interval for message acknowledgements.",
    )
    message_ack_every_n_messages: int = _knob(
        1000,
        "HYPERACTOR_MESSAGE_ACK_EVERY_N_MESSAGES",
        _INERT + "no message acknowledgements here.",
        "acknowledge every N messages.",
        ge=0,
    )
    message_ttl_default: int = _knob(
        64,
        "HYPERACTOR_MESSAGE_TTL_DEFAULT",
        _INERT + "messages carry no hop limit here (cast trees have a fixed depth).",
        "default message time-to-live in hops (0..255).",
        ge=0,
        le=255,
    )
    split_max_buffer_size: int = _knob(
        5,
        "HYPERACTOR_SPLIT_MAX_BUFFER_SIZE",
        _INERT + "no message splitting here.",
        "maximum buffer size for message splitting.",
        ge=0,
    )
    split_max_buffer_age: HumanDuration = _knob(
        "50ms",
        "HYPERACTOR_SPLIT_MAX_BUFFER_AGE",
        _INERT + "no message splitting here.",
        "maximum age of split message buffers.",
    )
    default_encoding: Encoding = _knob(
        Encoding.Multipart,
        "HYPERACTOR_DEFAULT_ENCODING",
        _INERT + "Python payloads are pickled, IDL payloads are Cap'n Proto.",
        "default message encoding (Encoding.Bincode, Encoding.Json or Encoding.Multipart).",
    )
    message_latency_sampling_rate: float = _knob(
        0.01,
        "HYPERACTOR_MESSAGE_LATENCY_SAMPLING_RATE",
        _INERT + "no latency sampling here.",
        "fraction of messages whose latency is recorded (0.0 to 1.0).",
        ge=0.0,
        le=1.0,
        allow_inf_nan=False,
    )
    enable_dest_actor_reordering_buffer: bool = _knob(
        True,
        "HYPERACTOR_ENABLE_DEST_ACTOR_REORDERING_BUFFER",
        _INERT + "receivers here always deliver each sender's messages in sequence-number order "
        "(max_held_frames bounds the wait).",
        "reorder messages by sequence number at the destination actor.",
    )
    small_write_threshold: int = _knob(
        256,
        "MONARCH_HYPERACTOR_SMALL_WRITE_THRESHOLD",
        _INERT + "shm_min_bytes decides which buffers travel apart from the stream.",
        "writes below this many bytes are copied.",
        ge=0,
    )
    max_cast_dimension_size: int = _knob(
        16,
        "HYPERACTOR_MESH_MAX_CAST_DIMENSION_SIZE",
        _INERT + "casts here go down a tree of fixed fan-out whatever the mesh's shape.",
        "maximum dimension size for cast operations.",
        ge=0,
    )

    # -- channels -------------------------------------------------------------------------------
    default_transport: ChannelTransport | str = _knob(
        ChannelTransport.Unix,
        "HYPERACTOR_MESH_DEFAULT_TRANSPORT",
        "Honoured: where the client listens when its runtime starts, unless enable_transport or "
        "attach_to_workers chose: Unix, TcpWithLocalhost (127.0.0.1), TcpWithHostname (this "
        "machine's hostname's address) or tcp://HOST:PORT; another transport makes the start "
        "fail with ConfigError. Procs of this machine still talk over Unix sockets.",
        "default channel transport: a ChannelTransport, a transport name (tcp: TcpWithHostname) "
        "or an explicit address (tcp://HOST:PORT).",
    )
    channel_net_rx_buffer_full_check_interval: HumanDuration = _knob(
        "5s",
        "HYPERACTOR_CHANNEL_NET_RX_BUFFER_FULL_CHECK_INTERVAL",
        _INERT + "no such check here.",
        "network receive buffer check interval.",
    )
    channel_tcp_congestion: str = _knob(
        "",
        "HYPERACTOR_CHANNEL_TCP_CONGESTION",
        _INERT + "TCP links use the host's default congestion control.",
        "TCP congestion control (cubic, reno, bbr); empty keeps the host default.",
    )

    # -- spawning and stopping ------------------------------------------------------------------
    host_spawn_ready_timeout: HumanDuration = _knob(
        "30s",
        "HYPERACTOR_HOST_SPAWN_READY_TIMEOUT",
        _INERT + "spawn_timeout_s bounds a spawn here.",
        "max host bootstrapping time.",
    )
    mesh_proc_spawn_max_idle: HumanDuration = _knob(
        "30s",
        "HYPERACTOR_MESH_PROC_SPAWN_MAX_IDLE",
        _INERT + "spawn_timeout_s bounds a spawn here.",
        "max idle time while spawning procs.",
    )
    actor_spawn_max_idle: HumanDuration = _knob(
        "30s",
        "HYPERACTOR_MESH_ACTOR_SPAWN_MAX_IDLE",
        _INERT + "an actor spawn ends with its proc's reply or the proc's failure.",
        "max idle time while spawning actors.",
    )
    get_actor_state_max_idle: HumanDuration = _knob(
        "30s",
        "HYPERACTOR_MESH_GET_ACTOR_STATE_MAX_IDLE",
        _INERT + "no actor state queries here.",
        "max idle time for actor state queries.",
    )
    get_proc_state_max_idle: HumanDuration = _knob(
        "1m",
        "HYPERACTOR_MESH_GET_PROC_STATE_MAX_IDLE",
        _INERT + "no proc state queries here.",
        "max idle time for proc state queries.",
    )
    process_exit_timeout: HumanDuration = _knob(
        "10s",
        "HYPERACTOR_PROCESS_EXIT_TIMEOUT",
        _INERT + "proc_stop_timeout_s bounds a stopping proc.",
        "timeout for process exit.",
    )
    stop_actor_timeout: HumanDuration = _knob(
        "10s",
        "HYPERACTOR_STOP_ACTOR_TIMEOUT",
        _INERT + "proc_stop_timeout_s bounds a stopping proc.",
        "timeout for stopping actors.",
    )
    cleanup_timeout: HumanDuration = _knob(
        "3s",
        "HYPERACTOR_CLEANUP_TIMEOUT",
        _INERT + "proc_stop_timeout_s bounds a stopping proc's cleanup.",
        "timeout for cleanup operations.",
    )
    proc_stop_max_idle: HumanDuration = _knob(
        "30s",
        "HYPERACTOR_MESH_PROC_STOP_MAX_IDLE",
        _INERT + "proc_stop_timeout_s bounds a stopping proc.",
        "max idle time while stopping procs.",
    )
    mesh_terminate_timeout: HumanDuration = _knob(
        "10s",
        "HYPERACTOR_MESH_TERMINATE_TIMEOUT",
        _INERT + "proc_stop_timeout_s bounds a stopping proc.",
        "timeout per child during graceful termination.",
    )
    mesh_terminate_concurrency: int = _knob(
        16,
        "HYPERACTOR_MESH_TERMINATE_CONCURRENCY",
        _INERT + "all of a mesh's procs are stopped at once.",
        "maximum concurrent terminations during shutdown.",
        ge=0,
    )
    mesh_bootstrap_enable_pdeathsig: bool = _knob(
        True,
        "HYPERACTOR_MESH_BOOTSTRAP_ENABLE_PDEATHSIG",
        _INERT + "how procs here die with their spawner does not depend on it.",
        "parent-death signal for spawned processes.",
    )
    mesh_orphan_timeout: HumanDuration | None = _knob(
        "1m",
        "HYPERACTOR_MESH_ORPHAN_TIMEOUT",
        _INERT + "a proc here exits when its link to its owner closes.",
        "how long a proc whose client is gone lives on (None, in the environment none: forever).",
    )
    supervision_watchdog_timeout: HumanDuration = _knob(
        "2m",
        "HYPERACTOR_MESH_SUPERVISION_WATCHDOG_TIMEOUT",
        _INERT + "peer_timeout_s is the liveness bound here.",
        "silence on the supervision stream after which the controller counts as unreachable.",
    )

    # -- admin and attach -----------------------------------------------------------------------
    mesh_admin_addr: str = _knob(
        "[::]:1729",
        "HYPERACTOR_MESH_ADMIN_ADDR",
        _INERT + "this project's admin endpoint (the admin setting) listens on 127.0.0.1, on a "
        "port of its own.",
        "socket address of the mesh admin HTTP server.",
    )
    mesh_attach_config_timeout: HumanDuration = _knob(
        "1m",
        "HYPERACTOR_MESH_ATTACH_CONFIG_TIMEOUT",
        "Honoured: how long attach_to_workers dials again an agent that refuses the connection "
        "(not listening yet) before the attach fails naming it; read at each attach.",
        "timeout of the config-push barrier of attach_to_workers().",
    )

    # -- RDMA -----------------------------------------------------------------------------------
    rdma_allow_tcp_fallback: bool = _knob(
        True,
        "MONARCH_RDMA_ALLOW_TCP_FALLBACK",
        _INERT + "rdma_backend chooses the backend here.",
        "allow a TCP backend when ibverbs is unavailable.",
    )
    rdma_disable_ibverbs: bool = _knob(
        False,
        "MONARCH_RDMA_DISABLE_IBVERBS",
        _INERT + "rdma_backend chooses the backend here.",
        "never use ibverbs, even when available.",
    )
    rdma_max_chunk_size_mb: int = _knob(
        64,
        "MONARCH_RDMA_MAX_CHUNK_SIZE_MB",
        _INERT + "no such chunking here.",
        "maximum chunk size in MiB of TCP-based RDMA transfers.",
        ge=0,
    )
    rdma_ibverbs_target: str = _knob(
        "",
        "MONARCH_RDMA_IBVERBS_TARGET",
        _INERT + "rdma_ib_device names the device here.",
        "default ibverbs device target (cpu:<numa>, gpu:<ordinal>, nic:<name>); empty: automatic.",
    )
    rdma_peer_device_affinity: str = _knob(
        "",
        "MONARCH_RDMA_PEER_DEVICE_AFFINITY",
        _INERT + "rdma_ib_device names the device here.",
        "which peer NICs each local NIC may pair with (any, match_name, groups:...); empty: any.",
    )
    rdma_runtime_worker_threads: int = _knob(
        16,
        "MONARCH_RDMA_RUNTIME_WORKER_THREADS",
        _INERT + "no RDMA worker threads here.",
        "worker threads of the RDMA data-plane runtime.",
        ge=0,
    )

    @field_validator("default_transport")
    @classmethod
    def _transport(cls, value: ChannelTransport | str) -> ChannelTransport | str:
        return check_transport(value)

    @field_validator("mesh_admin_addr")
    @classmethod
    def _socket_addr(cls, value: str) -> str:
        # a ValueError (ConfigError), as Monarch's: the type is right, the address is not
        return _check_socket_addr(value)

    @field_validator("mesh_orphan_timeout", mode="before")
    @classmethod
    def _none_from_env(cls, value: Any) -> Any:
        # the environment spells "no timeout" as "none" (to_env writes it so)
        return None if isinstance(value, str) and value.strip().lower() == "none" else value


KNOB_EFFECT: dict[str, bool] = {
    name: not (field.description or "").startswith(_INERT)
    for name, field in MonarchKnobs.model_fields.items()
}
"""``{knob: honoured}``: True where this runtime acts on the knob."""
