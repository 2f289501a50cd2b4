"""Every setting of monarch-idl in one typed, validated model (Monarch's ``monarch.config``).

A setting has three layers, highest first (the same precedence as Monarch's ``monarch.config``):

1. overrides set in code with :func:`configure` or :func:`configured` (this process only, until
   :func:`clear_runtime_config` or the end of the ``with`` block);
2. the environment: ``MONARCH_<FIELD NAME IN CAPITALS>``, e.g. ``MONARCH_PEER_TIMEOUT_S=10``;
   an empty value counts as unset;
3. the defaults of :class:`MonarchConfig`.

:func:`get_global_config` returns the merged, frozen view. The environment is read when that view
is built: on first use and again after every :func:`configure`, :func:`configured` entry or exit
and :func:`clear_runtime_config`. A process that starts procs passes :func:`to_env` in their
environment so that its effective settings, overrides included, hold in them too.

Importing this module reads nothing and starts nothing; it imports pydantic-settings (about
0.1 s on a cold interpreter), never torch or jinja2. The full table of settings is in
``docs/configuration.md`` (printed by ``monarch config --markdown``).

Variables the runtime sets for its own children (``MONARCH_BOOTSTRAP``, ``MONARCH_RUNTIME_DIR``,
``MONARCH_IN_ZYGOTE``) are not settings: see :data:`BOOTSTRAP_VARIABLES`.
"""

from __future__ import annotations

import contextlib
import enum
import importlib
import math
import os
import sys
import threading
import types
from collections.abc import Iterator, Mapping
from typing import Annotated, Any, Literal, get_args, get_origin

from pydantic import AfterValidator, Field, SecretStr, TypeAdapter, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from ._config_knobs import KNOB_EFFECT, ChannelTransport, Encoding, MonarchKnobs
from ._core.errors import MonarchError

__all__ = [
    "BOOTSTRAP_VARIABLES",
    "ENV_PREFIX",
    "ChannelTransport",
    "ConfigError",
    "Encoding",
    "MonarchConfig",
    "clear_runtime_config",
    "configure",
    "configured",
    "env_var",
    "get_global_config",
    "get_runtime_config",
    "to_env",
]

ENV_PREFIX = "MONARCH_"

BOOTSTRAP_VARIABLES: Mapping[str, str] = {
    "MONARCH_BOOTSTRAP": "Set by the parent for one spawned proc: the base64 cloudpickle of its "
    "bootstrap callable; the proc removes it from its environment at start.",
    "MONARCH_RUNTIME_DIR": "Set by the parent for its procs: the folder of the job's Unix "
    "sockets; its presence also tells a process that it is a proc, not a client.",
    "MONARCH_PYTHON_EXECUTABLE": "Set by the parent for procs spawned from a "
    "HostMesh.with_python_executable mesh: the interpreter procs they spawn use too.",
    "MONARCH_ROOT_ADDR": "Set by the parent for its procs: the address of the job's root client, "
    "which hosts the controllers of get_or_spawn_controller.",
    "MONARCH_IN_ZYGOTE": "Set in the fork server and everything it forks: a fork server refuses "
    "to start under it, so an import hook cannot chain fork servers.",
    "MONARCH_DEBUG_CONTROLLER": "Set by the root client for its procs: the addresses of its debug "
    "controller (unix:PATH, and tcp:HOST:PORT or tls:HOST:PORT when the client listens on TCP), "
    "which a rank paused in breakpoint() connects to (monarch debug).",
    "MONARCH_LOG_SINK": "Set by the root client for its procs: where their output lines go (the "
    "client's log sink port).",
    "MONARCH_PROC_LOG_FILE": "Set by a proc's spawner: the proc's log file on its host.",
    "MONARCH_PROC_RANK": "Set by a proc's spawner: the proc's rank in its spawn (log prefixes).",
    "MONARCH_PROC_RANK_BASE": "Set by a host agent's client: added to the ranks the agent gives its "
    "procs (the host's first rank in a multi-host mesh).",
}
"""Environment variables the runtime sets for the processes it starts. They carry one process's
bootstrap, not a user's choice, so they are not fields of :class:`MonarchConfig`; setting them
by hand is not supported."""


class ConfigError(MonarchError, ValueError):
    """A setting has a bad value (from the environment or from :func:`configure`), or
    :func:`configure` got a name that is not a setting. The message names the variable or key
    and the rejected value."""


_LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
_MiB = 1 << 20


class MonarchConfig(MonarchKnobs):
    """The settings of monarch-idl: one frozen snapshot, built by :func:`get_global_config`.

    Each field ``name`` is read from the environment variable ``MONARCH_<NAME>`` (see
    :func:`env_var`) and can be overridden in code with ``configure(name=value)``. Units are in
    the names: ``_s`` seconds, ``_bytes`` bytes.

    It also holds Monarch's own knobs under Monarch's names, types, defaults and environment
    variables (``codec_max_frame_length``, ``message_delivery_timeout="30s"``, ...; see
    ``docs/configuration.md``, which says which of them this runtime acts on). Every field reads
    as an attribute (``cfg.peer_timeout_s``) and, as Monarch's ``get_global_config()`` dict does,
    by subscript (``cfg["tail_log_lines"]``).

    Raises:
        pydantic.ValidationError: on direct construction with a bad value; use
            :func:`get_global_config`, which raises :class:`ConfigError` naming the variable.
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        frozen=True,
        extra="forbid",
        env_ignore_empty=True,
        case_sensitive=False,
        validate_default=True,
        validate_by_name=True,
        validate_by_alias=True,
    )

    # -- liveness and timeouts ------------------------------------------------------------------
    peer_timeout_s: float = Field(
        3.0,
        ge=0.5,
        allow_inf_nan=False,
        description="Liveness bound: a peer proc (Unix or TCP) that is silent or hung, not just "
        "dead, for this long is declared lost and reported as a failure.",
    )
    call_timeout_s: float | None = Field(
        None,
        gt=0,
        allow_inf_nan=False,
        description="Default timeout of a call whose endpoint sets none; the call then raises "
        "CallTimeout. Unset: wait until the reply or a failure.",
    )
    connect_timeout_s: float = Field(
        10.0,
        gt=0,
        allow_inf_nan=False,
        description="Bound on dialing a peer and completing its authentication handshake.",
    )
    spawn_timeout_s: float = Field(
        30.0,
        gt=0,
        allow_inf_nan=False,
        description="Bound on a spawned proc becoming reachable; past it the spawn fails.",
    )
    proc_stop_timeout_s: float = Field(
        5.0,
        ge=0,
        allow_inf_nan=False,
        description="How long a stopping proc may run its actors' cleanup before it is killed.",
    )

    # -- bounds on what peers may make a process hold -------------------------------------------
    max_envelope_bytes: int = Field(
        64 * _MiB,
        ge=1,
        description="Largest message envelope accepted from a peer; a bigger one closes the link.",
    )
    max_frame_bytes: int = Field(
        1 << 40,
        ge=1,
        description="Largest frame (envelope plus out-of-band buffers) sent or accepted: a bigger "
        "message is not sent (the send raises SupervisionError), a bigger frame received closes "
        "the link. The smaller of this and codec_max_frame_length (10 GiB) is in force.",
    )
    max_held_frames: int = Field(
        65536,
        ge=1,
        description="Frames held per origin while waiting for a missing sequence number; beyond "
        "it the link that brought the next one is closed.",
    )
    max_held_bytes: int = Field(
        1 << 30,
        ge=0,
        description="The same bound as max_held_frames, in bytes of held payload and buffers.",
    )
    max_connections: int = Field(
        4096,
        ge=1,
        description="Accepted connections a process keeps open at once; one more is closed at "
        "once, before any byte of it is read.",
    )

    # -- shared memory --------------------------------------------------------------------------
    shm: bool = Field(
        True,
        description="Send large buffers between procs on one host through shared memory "
        "(sealed memfd segments) instead of through the Unix socket.",
    )
    shm_min_bytes: int = Field(
        1 * _MiB,
        ge=1,
        description="Smallest buffer sent through shared memory; smaller ones go in the stream.",
    )
    shm_pool_max_bytes: int = Field(
        64 * _MiB,
        ge=0,
        description="Idle shared-memory segments kept for reuse, per connection and direction; "
        "segments beyond it are released after use.",
    )

    # -- processes and hosts --------------------------------------------------------------------
    zygote: bool = Field(
        True,
        description="Start procs by forking a prestarted fork server rather than starting a "
        "fresh interpreter for each.",
    )
    prefix_python_logs_with_actor: bool = Field(
        True,
        description="In procs, prefix every Python log message emitted inside an actor with the "
        "actor's name (Monarch's [actor=<root>.<module.Class name{point}>] prefix).",
    )
    log_level: _LogLevel = Field(
        "WARNING",
        description="Logging level of the procs the runtime starts.",
    )
    hosts: str = Field(
        "",
        description="The job's hosts for hosts_from_config(): a comma-separated list of host "
        "names, or a count. Empty: this host only.",
    )
    cluster_token: SecretStr | None = Field(
        None,
        description="Shared secret that authenticates both ends of every TCP connection. "
        "Unset: TCP peers cannot be reached. Never printed.",
    )

    tls_ca: str | None = Field(
        None,
        min_length=1,
        description="CA bundle (PEM file) for mutual TLS on every TCP link: peers must present a "
        "certificate signed by it. Set with tls_cert. Unset: TCP links are authenticated by the "
        "cluster token only. See docs/multihost.md.",
    )
    tls_cert: str | None = Field(
        None,
        min_length=1,
        description="This process's certificate chain (PEM file) for mutual TLS; it may also hold "
        "the private key.",
    )
    tls_key: str | None = Field(
        None,
        min_length=1,
        description="The private key (PEM file) of tls_cert. Unset: tls_cert holds the key.",
    )

    # -- tools ----------------------------------------------------------------------------------
    admin: bool = Field(
        True,
        description="The client serves its admin endpoint (HTTP/JSON on 127.0.0.1, token in the "
        "client's private admin.json) for monarch status/exec/env/top/dashboard. Served by a "
        "stdlib HTTP server on the client's event loop. See docs/tools.md.",
    )

    # -- distributed tensors (monarch.tensor) ---------------------------------------------------
    tensor_collective_timeout_s: float = Field(
        30.0,
        gt=0,
        allow_inf_nan=False,
        description="Bound on every collective of the tensor engine (the gloo groups' timeout, "
        "their rendezvous included) and on a tensor worker's wait for an rref actor call; past it "
        "the result is poisoned. Read when a ProcMesh is first activated.",
    )
    tensor_store_host: str = Field(
        "127.0.0.1",
        min_length=1,
        description="Address the client's rendezvous store for the tensor engine's gloo groups "
        "binds; collectives across hosts need an address the procs can reach.",
    )

    # -- diagnostics ----------------------------------------------------------------------------
    capture_frames_dir: str | None = Field(
        None,
        min_length=1,
        description="Folder where every process of the job (client and procs) writes each frame "
        "it sends and receives: one file per envelope, its exact wire bytes (for capnp decode), "
        "out-of-band bytes beside it, a subfolder per process (see docs/wire.md). Unset: off, at "
        "no cost.",
    )

    # -- RDMA (monarch.rdma) --------------------------------------------------------------------
    rdma_backend: Literal["auto", "ibverbs", "cma", "tcp"] = Field(
        "auto",
        description="RDMA backend for every transfer; anything but auto forces that backend, and "
        "a forced backend that cannot serve a transfer raises RDMAUnavailableError.",
    )
    rdma_control: Literal["auto", "actor", "tcp"] = Field(
        "auto",
        description="Where an RDMA owner answers control requests: its proc's RDMA manager actor, "
        "its TCP server, or auto (the actor when it has an ibverbs device, else TCP).",
    )
    rdma_tcp_host: str = Field(
        "127.0.0.1",
        min_length=1,
        description="Address the per-proc RDMA TCP server binds and advertises; left at "
        "127.0.0.1, a proc that the runtime runs over TCP (one a host agent started) uses the "
        "host of its own address, which other hosts reach.",
    )
    rdma_ib_device: str = Field(
        "",
        description="ibverbs device name (e.g. mlx5_0). Empty: the first device found.",
    )
    rdma_ib_gid_index: int = Field(
        -1,
        ge=-1,
        description="GID index on port 1. -1: the first IPv4-mapped GID, else 0.",
    )
    rdma_drop_grace_s: float = Field(
        5.0,
        ge=0,
        allow_inf_nan=False,
        description="How long a dropped RDMA region's memory stays alive for transfers that "
        "passed their checks just before the drop.",
    )

    rdma_tcp_max_connections: int = Field(
        512,
        ge=1,
        description="Connections an owner's RDMA TCP server serves at once; one more is refused "
        "with an error and closed.",
    )
    rdma_tcp_idle_timeout_s: float = Field(
        60.0,
        gt=0,
        allow_inf_nan=False,
        description="How long an RDMA TCP server connection may stay silent (between requests or "
        "inside a transfer) before it is closed; pooled client connections are not reused past it.",
    )
    rdma_tcp_max_request_bytes: int = Field(
        1 << 16,
        ge=1024,
        description="Largest RDMA control request, answer or error message; a larger one closes "
        "the connection.",
    )
    rdma_cma_ptracer: int = Field(
        0,
        ge=-1,
        description="Which processes an owner lets attach with process_vm_readv under Yama "
        "ptrace_scope 1: 0 the job's root process and its descendants, a pid that process and its "
        "descendants, -1 none (only ancestors attach; others fall back to tcp).",
    )

    @field_validator("log_level", "rdma_backend", "rdma_control", mode="before")
    @classmethod
    def _normalize_case(cls, value: Any, info: Any) -> Any:
        if isinstance(value, str):
            value = value.strip()
            return value.upper() if info.field_name == "log_level" else value.lower()
        return value

    @field_validator("hosts")
    @classmethod
    def _check_hosts(cls, value: str) -> str:
        raw = value.strip()
        if raw.isdigit():
            if int(raw) < 1:
                raise ValueError("a host count must be at least 1")
            return raw
        if raw and not [h for h in raw.split(",") if h.strip()]:
            raise ValueError("names no hosts")
        return ",".join(h.strip() for h in raw.split(",") if h.strip())

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Overrides, then the environment; no dotenv or secret files are read."""
        return (init_settings, env_settings)

    def __getitem__(self, name: str) -> Any:
        """The value of setting ``name`` (Monarch's ``get_global_config()[name]``).

        Raises:
            KeyError: ``name`` is not a setting.
        """
        if name not in type(self).model_fields:
            raise KeyError(name)
        return getattr(self, name)

    def __contains__(self, name: object) -> bool:
        return name in type(self).model_fields

    def get(self, name: str, default: Any = None) -> Any:
        """The value of setting ``name``, or ``default`` where ``name`` is not a setting."""
        return getattr(self, name) if name in type(self).model_fields else default

    def keys(self) -> list[str]:
        """Every setting's name (Monarch's knobs first), as ``dict.keys()`` of Monarch's view."""
        return list(type(self).model_fields)

    def __repr__(self) -> str:
        changed = {k: getattr(self, k) for k in sorted(self.model_fields_set)}
        inner = " ".join(f"{k}={v!r}" for k, v in changed.items())
        return f"<MonarchConfig {inner or 'defaults'}>"


def env_var(name: str) -> str:
    """The environment variable of the setting ``name``: ``MONARCH_`` and the name in capitals,
    or for Monarch's knobs Monarch's variable (``HYPERACTOR_MESSAGE_DELIVERY_TIMEOUT``).

    Raises:
        ConfigError: ``name`` is not a field of :class:`MonarchConfig`.
    """
    _check_names([name])
    alias = MonarchConfig.model_fields[name].validation_alias
    return alias if isinstance(alias, str) else ENV_PREFIX + name.upper()


def to_env(config: MonarchConfig | None = None) -> dict[str, str]:
    """Every setting as environment variables, for the processes this one starts.

    A child whose environment holds these reads back exactly ``config`` from
    :func:`get_global_config`, whatever else it inherited: unset optional settings are passed as
    empty values (which count as unset). The cluster token is included in clear text, so the
    result must only go into a child's environment, never into logs.

    Args:
        config: the settings to pass; None means :func:`get_global_config`.

    Returns:
        ``{"MONARCH_PEER_TIMEOUT_S": "3.0", ...}``, one entry per field.

    Raises:
        ConfigError: ``config`` is None and a setting in the environment is bad.
    """
    cfg = get_global_config() if config is None else config
    fields = MonarchConfig.model_fields
    return {
        # None of a setting whose default is not None (a knob's "no timeout") is spelled "none"
        env_var(name): "none" if value is None and fields[name].default is not None else _env_text(value)
        for name, value in ((n, getattr(cfg, n)) for n in fields)
    }


def get_global_config() -> MonarchConfig:
    """The settings in force in this process: overrides, then the environment, then defaults.

    The result is frozen; it is rebuilt (and the environment read again) only after
    :func:`configure`, :func:`configured` or :func:`clear_runtime_config`.

    Raises:
        ConfigError: an environment variable holds a bad value; the message names the variable
            and the value (the cluster token's value is never shown).
    """
    cfg = _state.config
    if cfg is not None:
        return cfg
    with _state.lock:
        if _state.config is None:
            _state.config = _build(_state.overrides)
        return _state.config


def get_runtime_config() -> dict[str, Any]:
    """The overrides set with :func:`configure` and still in force (Monarch's runtime layer).

    Returns:
        A copy: ``{name: value}`` for each overridden setting, as validated.
    """
    with _state.lock:
        return dict(_state.overrides)


def configure(**overrides: Any) -> MonarchConfig:
    """Override settings in this process, on top of earlier overrides (Monarch's ``configure``).

    Overrides hold for every thread until :func:`clear_runtime_config`; :func:`get_global_config`
    shows them at once. The client's runtime resolves its settings once, when it starts (at the
    first spawn or attach), and so does the environment it gives every proc it spawns: an
    override made after that reaches neither the runtime's links nor procs spawned later. Pass
    :func:`to_env` to processes started by hand.

    Args:
        **overrides: ``name=value`` per setting (see :class:`MonarchConfig`); ``None`` is a value
            (unset) only for settings whose default is None.

    Returns:
        The new merged settings.

    Raises:
        ConfigError: a name is not a setting, or a value is out of range; nothing is changed.
        TypeError: a value has the wrong type (e.g. a string for ``peer_timeout_s``); nothing is
            changed.
    """
    with _state.lock:
        merged = {**_state.overrides, **_validate_overrides(overrides)}
        cfg = _build(merged)
        _state.overrides = merged
        _state.config = cfg
        return cfg


@contextlib.contextmanager
def configured(**overrides: Any) -> Iterator[MonarchConfig]:
    """Override settings for the duration of a ``with`` block (Monarch's ``configured``).

    Nested blocks stack; on exit, normal or by exception, the overrides in force before the
    block are restored. The overrides apply to the whole process (every thread) while the
    block runs, so use it where nothing else changes settings concurrently (tests, scripts).

    Args:
        **overrides: as for :func:`configure`.

    Yields:
        The merged settings in force inside the block.

    Raises:
        ConfigError, TypeError: as for :func:`configure`, before the block runs.
    """
    with _state.lock:
        saved = dict(_state.overrides)
        cfg = configure(**overrides)
    try:
        yield cfg
    finally:
        with _state.lock:
            _state.overrides = saved
            _state.config = None


def clear_runtime_config() -> None:
    """Drop every override set with :func:`configure` (Monarch's ``clear_runtime_config``); the
    environment is read again at the next :func:`get_global_config`."""
    with _state.lock:
        _state.overrides = {}
        _state.config = None


# -- internals ----------------------------------------------------------------------------------


class _State:
    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.overrides: dict[str, Any] = {}
        self.config: MonarchConfig | None = None
        self.adapters: dict[str, TypeAdapter[Any]] = {}


_state = _State()


def _check_names(names: Any) -> None:
    fields = MonarchConfig.model_fields
    for name in names:
        if name not in fields:
            raise ConfigError(f"{name!r} is not a monarch setting; settings: {', '.join(fields)}")


def _validate_overrides(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Check names and types strictly (no string parsing in code), before anything changes."""
    _check_names(overrides)
    out: dict[str, Any] = {}
    for name, value in overrides.items():
        adapter = _state.adapters.get(name)
        if adapter is None:
            field = MonarchConfig.model_fields[name]
            # the field's own constraints (ranges, lengths) are checked when the model is built
            assert field.annotation is not None  # every setting is annotated
            # a format check of the type itself (a humantime duration) is a TypeError, as in
            # Monarch; ranges are checked when the model is built (ConfigError)
            checks = [m for m in field.metadata if isinstance(m, AfterValidator)]
            typ: Any = Annotated.__class_getitem__((field.annotation, *checks)) if checks else field.annotation  # type: ignore[attr-defined]  # a type built at run time
            adapter = _state.adapters[name] = TypeAdapter(typ)
        try:
            out[name] = adapter.validate_python(value, strict=True)
        except ValidationError as exc:
            if isinstance(value, str) and _base_type(name) is SecretStr:
                out[name] = SecretStr(value)
                continue
            why = "".join(
                f"; {e['msg'].removeprefix('Value error, ')}" for e in exc.errors(include_url=False) if e["type"] == "value_error"
            )
            raise TypeError(
                f"configure({name}=...): expected {_type_text(name)}, got "
                f"{type(value).__name__} {_shown(name, value)}{why}"
            ) from None
    return out


def _build(overrides: Mapping[str, Any]) -> MonarchConfig:
    try:
        return MonarchConfig(**overrides)
    except ValidationError as exc:
        problems = []
        by_var = {env_var(n).upper(): n for n in MonarchConfig.model_fields}
        for err in exc.errors(include_url=False):
            name = str(err["loc"][0]) if err["loc"] else "?"
            name = by_var.get(name.upper(), name)
            if name in overrides:
                where = f"configure({name}={_shown(name, overrides[name])})"
            else:
                where = f"{env_var(name)}={_shown(name, _environ_value(name))}"
            problems.append(f"{where}: {err['msg']}")
        raise ConfigError("bad monarch setting: " + "; ".join(problems)) from None


def _environ_value(name: str) -> str | None:
    var = env_var(name)
    for key, value in os.environ.items():
        if key.upper() == var:
            return value
    return None


def _shown(name: str, value: Any) -> str:
    if _base_type(name) is SecretStr:
        return "'<hidden>'"
    return repr(value)


def _base_type(name: str) -> Any:
    ann = MonarchConfig.model_fields[name].annotation
    args = [a for a in get_args(ann) if a is not type(None)]
    if get_origin(ann) is not Literal and len(args) == 1:
        return args[0]
    return ann


def _env_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, enum.Enum):
        return str(value.value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else str(value)
    return str(value)


def _type_text(name: str) -> str:
    """The field's type in words, as the settings table shows it."""
    ann = MonarchConfig.model_fields[name].annotation
    optional = type(None) in get_args(ann)
    base = _base_type(name)
    if _is_duration(name):
        text = "duration (humantime)"
    elif get_origin(base) is Literal:
        text = " / ".join(str(a) for a in get_args(base))
    elif base is SecretStr:
        text = "str (secret)"
    elif isinstance(base, type):
        text = base.__name__
    else:
        text = str(base)
    return f"{text}, optional" if optional else text


def _is_duration(name: str) -> bool:
    from ._config_knobs import HumanDuration

    field = MonarchConfig.model_fields[name]
    checks = [m for m in field.metadata if isinstance(m, AfterValidator)]
    return checks == list(get_args(HumanDuration)[1:]) or HumanDuration in get_args(field.annotation)


def _unit(name: str) -> str:
    if name.endswith("_s"):
        return "s"
    if name.endswith("_bytes"):
        return "bytes"
    return ""


def _default_text(name: str) -> str:
    default = MonarchConfig.model_fields[name].default
    if default is None:
        return "unset"
    text = _env_text(default)
    if (_unit(name) == "bytes" or name == "codec_max_frame_length") and default >= 1024:
        for shift, suffix in ((40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")):
            if default % (1 << shift) == 0:
                return f"{text} ({default >> shift} {suffix})"
    return text if text else '""'


def _settings_rows() -> list[tuple[str, str, str, str, str, str]]:
    """``(field, env var, type, default, unit, meaning)`` per setting, in declaration order."""
    return [
        (
            name,
            env_var(name),
            _type_text(name),
            _default_text(name),
            _unit(name),
            field.description or "",
        )
        for name, field in MonarchConfig.model_fields.items()
        if name not in KNOB_EFFECT
    ]


def _knob_rows() -> list[tuple[str, str, str, str, str, str]]:
    """``(knob, env var, type, default, here, meaning)`` per Monarch knob, in declaration order."""
    rows = []
    for name, field in MonarchConfig.model_fields.items():
        if name not in KNOB_EFFECT:
            continue
        effect, _, meaning = (field.description or "").partition(" Monarch: ")
        rows.append((name, env_var(name), _type_text(name), _default_text(name), effect, meaning))
    return rows


def _settings_markdown() -> str:
    """The settings tables of ``docs/configuration.md`` (``monarch config --markdown``): this
    project's settings, a blank line, then Monarch's knobs with what each does here."""
    lines = [
        "| Environment variable | `configure()` key | Type | Default | Unit | Meaning |",
        "|---|---|---|---|---|---|",
    ]
    for name, var, typ, default, unit, meaning in _settings_rows():
        cells = [f"`{var}`", f"`{name}`", typ, f"`{default}`", unit or "-", meaning]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    lines += [
        "",
        "| Monarch's environment variable | `configure()` key | Type | Default | Here | Monarch's meaning |",
        "|---|---|---|---|---|---|",
    ]
    for name, var, typ, default, effect, meaning in _knob_rows():
        cells = [f"`{var}`", f"`{name}`", typ, f"`{default}`", effect, meaning]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


MonarchConfig.__module__ = __name__
ChannelTransport.__module__ = __name__  # its public home (pickles by this name)
Encoding.__module__ = __name__


class _ConfigModule(types.ModuleType):
    """``monarch.config`` itself: each setting reads and writes as a module attribute, as
    Monarch's ``monarch.actor.config.prefix_python_logs_with_actor = False``. Reading gives the
    value in force (:func:`get_global_config`); assigning is :func:`configure` of that one
    setting (validated the same way: a bad value raises ``TypeError``/``ConfigError``)."""

    def __getattr__(self, name: str) -> Any:
        if name in MonarchConfig.model_fields:
            return getattr(get_global_config(), name)
        raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")

    def __setattr__(self, name: str, value: Any) -> None:
        if name in MonarchConfig.model_fields:
            configure(**{name: value})
            return
        super().__setattr__(name, value)

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        # pickled by reference, as a plain module is (cloudpickle dispatches on the exact type
        # ``ModuleType``, so a function that names ``monarch.config`` could not be pickled)
        return importlib.import_module, (self.__name__,)


sys.modules[__name__].__class__ = _ConfigModule
