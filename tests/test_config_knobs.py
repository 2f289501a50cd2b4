"""Monarch's own configuration knobs in monarch.config: names, defaults, types, Monarch's
environment variables, humantime durations, read-back by subscript, propagation to procs."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from monarch._config_knobs import KNOB_EFFECT, format_duration, parse_duration
from monarch.config import (
    ChannelTransport,
    ConfigError,
    Encoding,
    MonarchConfig,
    clear_runtime_config,
    configure,
    configured,
    env_var,
    get_global_config,
    get_runtime_config,
    to_env,
)


@pytest.fixture(autouse=True)
def clean_config(monkeypatch: pytest.MonkeyPatch):
    for key in list(os.environ):
        if key.upper().startswith(("MONARCH_", "HYPERACTOR_")):
            monkeypatch.delenv(key)
    clear_runtime_config()
    yield
    clear_runtime_config()


# A value other than the default for every knob (Monarch's defaults are asserted below).
CHANGED = dict(
    enable_log_forwarding=True,
    enable_file_capture=True,
    tail_log_lines=100,
    read_log_buffer=16384,
    force_file_log=True,
    prefix_with_rank=False,
    codec_max_frame_length=1 << 21,
    message_delivery_timeout="5m",
    message_ack_time_interval="2s",
    message_ack_every_n_messages=500,
    message_ttl_default=20,
    split_max_buffer_size=2048,
    split_max_buffer_age="100ms",
    default_encoding=Encoding.Json,
    message_latency_sampling_rate=0.5,
    enable_dest_actor_reordering_buffer=False,
    small_write_threshold=512,
    max_cast_dimension_size=2048,
    channel_net_rx_buffer_full_check_interval="200ms",
    channel_tcp_congestion="bbr",
    host_spawn_ready_timeout="10m",
    mesh_proc_spawn_max_idle="2m",
    actor_spawn_max_idle="45s",
    get_actor_state_max_idle="1m 30s",
    get_proc_state_max_idle="1m 30s",
    process_exit_timeout="20s",
    stop_actor_timeout="15s",
    cleanup_timeout="25s",
    proc_stop_max_idle="45s",
    mesh_terminate_timeout="20s",
    mesh_terminate_concurrency=32,
    mesh_bootstrap_enable_pdeathsig=False,
    mesh_orphan_timeout=None,
    supervision_watchdog_timeout="1m 30s",
    mesh_admin_addr="0.0.0.0:8080",
    mesh_attach_config_timeout="20s",
    rdma_allow_tcp_fallback=False,
    rdma_disable_ibverbs=True,
    rdma_max_chunk_size_mb=8,
    rdma_ibverbs_target="nic:mlx5_0",
    rdma_peer_device_affinity="groups:mlx5_0,mlx5_1|mlx5_2",
    rdma_runtime_worker_threads=32,
    default_transport=ChannelTransport.TcpWithLocalhost,
)


def test_every_knob_has_a_changed_value_here_and_says_whether_it_is_honoured():
    assert set(CHANGED) == set(KNOB_EFFECT), "a new knob needs a value in CHANGED"
    for name in KNOB_EFFECT:
        text = MonarchConfig.model_fields[name].description or ""
        assert text.startswith(("Honoured: ", "Accepted, no effect: ")), name
        assert " Monarch: " in text, name
    assert KNOB_EFFECT["codec_max_frame_length"] is True
    assert KNOB_EFFECT["default_transport"] is True
    assert KNOB_EFFECT["mesh_attach_config_timeout"] is True  # tests/runtime/test_local_agents.py
    assert KNOB_EFFECT["message_delivery_timeout"] is False


def test_knobs_have_monarchs_defaults_and_read_by_subscript():
    cfg = get_global_config()
    assert cfg["message_delivery_timeout"] == "30s"
    assert cfg["host_spawn_ready_timeout"] == "30s"
    assert cfg["message_ack_time_interval"] == "500ms"
    assert cfg["supervision_watchdog_timeout"] == "2m"
    assert cfg["get_proc_state_max_idle"] == "1m"
    assert cfg["mesh_orphan_timeout"] == "1m"
    assert cfg["codec_max_frame_length"] == 10 << 30
    assert cfg["message_ttl_default"] == 64
    assert cfg["split_max_buffer_size"] == 5
    assert cfg["default_encoding"] is Encoding.Multipart
    assert cfg["enable_dest_actor_reordering_buffer"] is True
    assert cfg["enable_log_forwarding"] is False
    assert cfg["tail_log_lines"] == 0
    assert cfg["mesh_admin_addr"] == "[::]:1729"
    assert cfg["rdma_runtime_worker_threads"] == 16
    assert cfg["peer_timeout_s"] == cfg.peer_timeout_s  # this project's settings read so too
    assert "tail_log_lines" in cfg and "nope" not in cfg
    assert cfg.get("nope", 7) == 7
    assert cfg.keys()[: len(KNOB_EFFECT)] == list(KNOB_EFFECT)
    with pytest.raises(KeyError):
        cfg["nope"]


def test_duration_knobs_read_back_in_humantime_form_and_restore_on_exit():
    with configured(
        host_spawn_ready_timeout="300s", get_actor_state_max_idle="90s", cleanup_timeout="1h30m"
    ) as cfg:
        assert cfg["host_spawn_ready_timeout"] == "5m"
        assert cfg["get_actor_state_max_idle"] == "1m 30s"
        assert cfg["cleanup_timeout"] == "1h 30m"
        assert get_runtime_config()["get_actor_state_max_idle"] == "1m 30s"
        # the runtime layer re-applies as is (Monarch's configured() restores this way)
        configure(**get_runtime_config())
    assert get_global_config()["host_spawn_ready_timeout"] == "30s"
    assert get_runtime_config() == {}


@pytest.mark.parametrize("text", ["invalid", "30", "abc123", "", "5 parsecs", "1.5s"])
def test_a_duration_that_does_not_parse_is_a_type_error_naming_the_format(text):
    with pytest.raises(TypeError, match="Invalid duration format"):
        configure(message_delivery_timeout=text)
    assert get_runtime_config() == {}


@pytest.mark.parametrize(
    "name, value",
    [
        ("host_spawn_ready_timeout", 30),
        ("message_delivery_timeout", 30.5),
        ("message_ack_every_n_messages", "100"),
        ("enable_dest_actor_reordering_buffer", "true"),
        ("message_latency_sampling_rate", "0.5"),
        ("default_encoding", "bincode"),
        ("default_encoding", 123),
        ("tail_log_lines", 1.0),
    ],
)
def test_a_knob_of_the_wrong_type_is_a_type_error(name, value):
    with pytest.raises(TypeError):
        configure(**{name: value})


@pytest.mark.parametrize(
    "name, value",
    [
        ("message_ttl_default", 256),
        ("tail_log_lines", -1),
        ("message_latency_sampling_rate", 1.5),
        ("mesh_admin_addr", "nohost"),
    ],
)
def test_a_knob_out_of_range_is_a_config_error(name, value):
    with pytest.raises(ConfigError, match=name):
        configure(**{name: value})


def test_knobs_read_monarchs_environment_variables(monkeypatch):
    assert env_var("message_delivery_timeout") == "HYPERACTOR_MESSAGE_DELIVERY_TIMEOUT"
    assert env_var("small_write_threshold") == "MONARCH_HYPERACTOR_SMALL_WRITE_THRESHOLD"
    assert env_var("rdma_ibverbs_target") == "MONARCH_RDMA_IBVERBS_TARGET"
    monkeypatch.setenv("HYPERACTOR_MESSAGE_DELIVERY_TIMEOUT", "90s")
    monkeypatch.setenv("HYPERACTOR_DEFAULT_ENCODING", "bincode")
    monkeypatch.setenv("HYPERACTOR_MESH_TAIL_LOG_LINES", "12")
    monkeypatch.setenv("MONARCH_TAIL_LOG_LINES", "99")  # not this knob's variable: ignored
    clear_runtime_config()
    cfg = get_global_config()
    assert cfg["message_delivery_timeout"] == "1m 30s"
    assert cfg["default_encoding"] is Encoding.Bincode
    assert cfg["tail_log_lines"] == 12
    with configured(tail_log_lines=3) as cfg:  # configure() wins over the environment
        assert cfg["tail_log_lines"] == 3


def test_a_bad_knob_in_the_environment_names_monarchs_variable(monkeypatch):
    monkeypatch.setenv("HYPERACTOR_MESSAGE_DELIVERY_TIMEOUT", "30")
    clear_runtime_config()
    with pytest.raises(
        ConfigError, match=r"HYPERACTOR_MESSAGE_DELIVERY_TIMEOUT='30'.*Invalid duration format"
    ):
        get_global_config()


def test_to_env_round_trips_every_knob_with_non_default_values(monkeypatch):
    parent = configure(**CHANGED)
    env = to_env()
    assert env["HYPERACTOR_MESH_ORPHAN_TIMEOUT"] == "none"
    assert env["HYPERACTOR_DEFAULT_ENCODING"] == "serde_json"
    clear_runtime_config()
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert get_global_config() == parent


_KNOBS_IN_A_PROC = """
from monarch import config
from monarch.actor import Actor, endpoint, this_host
from monarch.config import configured


class Probe(Actor):
    @endpoint
    def knobs(self) -> tuple:
        cfg = config.get_global_config()
        return (cfg["rdma_ibverbs_target"], cfg["message_delivery_timeout"], cfg["codec_max_frame_length"])


with configured(rdma_ibverbs_target="nic:mlx5_0", message_delivery_timeout="90s", codec_max_frame_length=3 << 20):
    procs = this_host().spawn_procs()
    try:
        print(repr(procs.spawn("probe", Probe).knobs.call_one().get(timeout=60)))
    finally:
        procs.stop().get(timeout=60)
"""


def test_a_knob_set_in_the_client_holds_in_a_spawned_proc():
    # a fresh client: a client resolves its settings once, when its runtime starts (this pytest
    # process's may have started already), so the knobs are set before its first spawn
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MONARCH_", "HYPERACTOR_"))}
    done = subprocess.run(
        [sys.executable, "-c", _KNOBS_IN_A_PROC], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == repr(("nic:mlx5_0", "1m 30s", 3 << 20)), done.stdout


def test_humantime_parse_and_format():
    assert parse_duration("1h 30m") == parse_duration("1h30m") == 5400 * 10**9
    assert parse_duration("500ms") == 500 * 10**6
    assert parse_duration("2 days 3ns") == 2 * 86400 * 10**9 + 3
    assert parse_duration("1M") == 2_630_016 * 10**9  # humantime's month: 30.44 days
    assert format_duration(0) == "0s"
    assert format_duration(90 * 10**9) == "1m 30s"
    assert format_duration(86400 * 2 * 10**9 + 1500 * 10**6) == "2days 1s 500ms"
    assert format_duration(31_557_600 * 10**9) == "1year"
    for text in ("30s", "5m", "2h", "1h 30m", "1m 30s", "100ms"):
        assert format_duration(parse_duration(text)) == text


_CHUNKS = """
from monarch.actor import Actor, SupervisionError, endpoint, this_host
from monarch.config import configured

class Chunks(Actor):
    @endpoint
    def count(self, chunks: list[bytes]) -> int:
        return len(chunks)

    @endpoint
    def make(self, n: int) -> bytes:
        return bytes(n)

def refused(call) -> str:
    try:
        call().get(timeout=30)
    except SupervisionError as exc:
        return "refused" if "larger than the frame limit of 1048576 bytes" in str(exc) else str(exc)
    return "sent"

with configured(codec_max_frame_length=1 << 20):  # before the runtime starts: it and its procs
    procs = this_host().spawn_procs()
    try:
        chunks = procs.spawn("chunks", Chunks)
        # 1 MiB of payload plus its encoding is over the limit: not sent
        print(refused(lambda: chunks.count.call_one([bytes(1 << 18)] * 4)))
        # no sequence number was used: the next call is answered
        print(chunks.count.call_one([bytes(1 << 18)] * 3).get(timeout=30))
        # a result over the limit reaches the caller as that error instead of no answer
        print(refused(lambda: chunks.make.call_one(2 << 20)))
        print(len(chunks.make.call_one(1000).get(timeout=30)))
    finally:
        procs.stop().get(timeout=60)
"""


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("MONARCH_", "HYPERACTOR_"))}


def test_a_call_over_codec_max_frame_length_is_not_sent_and_raises_supervision_error():
    # a fresh process: a client resolves its settings when its runtime starts
    out = subprocess.run(
        [sys.executable, "-c", _CHUNKS],
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["refused", "3", "refused", "1000"], out.stderr


def test_codec_max_frame_length_from_monarchs_variable_holds_in_client_and_procs():
    code = (
        "from monarch.actor import Actor, SupervisionError, endpoint, this_host\n"
        "class A(Actor):\n"
        "    @endpoint\n"
        "    def make(self, n: int) -> bytes:\n"
        "        return bytes(n)\n"
        "procs = this_host().spawn_procs()\n"
        "a = procs.spawn('a', A)\n"
        "try:\n"
        "    a.make.call_one(1).get(timeout=30)\n"
        "    try:\n"
        "        a.make.call_one(bytes(300000)).get(timeout=30)\n"
        "    except SupervisionError as exc:\n"
        "        print('client refused:', 'frame limit of 262144' in str(exc))\n"
        "    try:\n"
        "        a.make.call_one(300000).get(timeout=30)\n"
        "    except Exception as exc:\n"
        "        print('proc refused:', 'frame limit of 262144' in str(exc))\n"
        "finally:\n"
        "    procs.stop().get(timeout=60)\n"
    )
    env = _clean_env()
    env["HYPERACTOR_CODEC_MAX_FRAME_LENGTH"] = str(1 << 18)  # no MONARCH_* variable at all
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["client refused: True", "proc refused: True"], out.stderr


@pytest.mark.parametrize(
    "value, expected",
    [
        (ChannelTransport.TcpWithLocalhost, ChannelTransport.TcpWithLocalhost),
        (ChannelTransport.MetaTlsWithHostname, ChannelTransport.MetaTlsWithHostname),
        ("tcp", ChannelTransport.TcpWithHostname),
        ("unix", ChannelTransport.Unix),
        ("tcp://127.0.0.1:8080", "tcp://127.0.0.1:8080"),
    ],
)
def test_default_transport_reads_back_as_monarch_normalises_it(value, expected):
    assert get_global_config()["default_transport"] is ChannelTransport.Unix
    with configured(default_transport=value) as cfg:
        assert cfg["default_transport"] == expected
    assert get_global_config()["default_transport"] is ChannelTransport.Unix


def test_default_transport_rejects_other_types_and_strings():
    for bad in (42, {}):
        with pytest.raises(TypeError):
            configure(default_transport=bad)
    for bad in ("invalid://scheme", "random_string"):
        with pytest.raises(ValueError, match="is not a transport"):
            configure(default_transport=bad)


_LISTEN = """
import sys
from monarch.actor import Actor, endpoint, this_host
from monarch.config import ChannelTransport, ConfigError, configure
from monarch._mesh.current import current_runtime

class A(Actor):
    @endpoint
    def ok(self) -> int:
        return 1

configure(default_transport=getattr(ChannelTransport, sys.argv[1]))
try:
    procs = this_host().spawn_procs()
except ConfigError as exc:
    print("refused:", "not supported here" in str(exc))
else:
    print(current_runtime().router.addr.split(":")[0], procs.spawn("a", A).ok.call_one().get(timeout=30))
    procs.stop().get(timeout=60)
"""


@pytest.mark.parametrize(
    "member, expected",
    [("TcpWithLocalhost", "tcp 1"), ("Unix", "unix 1"), ("Quic", "refused: True")],
)
def test_default_transport_chooses_where_a_new_client_listens(member, expected):
    out = subprocess.run(
        [sys.executable, "-c", _LISTEN, member],
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [expected], out.stderr
