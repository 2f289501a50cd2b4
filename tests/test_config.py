"""monarch.config: environment parsing, validation, configure/configured, propagation to children."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from monarch import config
from monarch._config_knobs import KNOB_EFFECT
from monarch.config import (
    ConfigError,
    MonarchConfig,
    clear_runtime_config,
    configure,
    configured,
    get_global_config,
    get_runtime_config,
    to_env,
)
from pydantic import SecretStr, ValidationError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def clean_config(monkeypatch: pytest.MonkeyPatch):
    for key in list(os.environ):
        if key.upper().startswith(("MONARCH_", "HYPERACTOR_")):  # Monarch's knobs: HYPERACTOR_*
            monkeypatch.delenv(key)
    clear_runtime_config()
    yield
    clear_runtime_config()


def test_defaults_hold_when_no_monarch_variable_is_set():
    cfg = get_global_config()
    assert cfg == MonarchConfig()
    assert cfg.peer_timeout_s == 3.0
    assert cfg.call_timeout_s is None
    assert cfg.shm is True and cfg.zygote is True
    assert cfg.cluster_token is None
    assert cfg.rdma_backend == "auto"


def test_environment_values_are_parsed_into_typed_fields(monkeypatch):
    monkeypatch.setenv("MONARCH_PEER_TIMEOUT_S", "7.5")
    monkeypatch.setenv("MONARCH_CALL_TIMEOUT_S", "12")
    monkeypatch.setenv("MONARCH_SHM", "0")
    monkeypatch.setenv("MONARCH_ZYGOTE", "false")
    monkeypatch.setenv("MONARCH_MAX_CONNECTIONS", "100")
    monkeypatch.setenv("MONARCH_LOG_LEVEL", "debug")
    monkeypatch.setenv("MONARCH_RDMA_BACKEND", "TCP")
    monkeypatch.setenv("MONARCH_HOSTS", " a, b ,c ")
    monkeypatch.setenv("MONARCH_CLUSTER_TOKEN", "s3cret")
    cfg = get_global_config()
    assert cfg.peer_timeout_s == 7.5
    assert cfg.call_timeout_s == 12.0
    assert cfg.shm is False and cfg.zygote is False
    assert cfg.max_connections == 100
    assert cfg.log_level == "DEBUG"
    assert cfg.rdma_backend == "tcp"
    assert cfg.hosts == "a,b,c"
    assert isinstance(cfg.cluster_token, SecretStr)
    assert cfg.cluster_token.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(cfg) and "s3cret" not in str(cfg)


def test_empty_environment_value_counts_as_unset(monkeypatch):
    monkeypatch.setenv("MONARCH_PEER_TIMEOUT_S", "")
    monkeypatch.setenv("MONARCH_CLUSTER_TOKEN", "")
    cfg = get_global_config()
    assert cfg.peer_timeout_s == 3.0
    assert cfg.cluster_token is None


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("MONARCH_PEER_TIMEOUT_S", "abc"),
        ("MONARCH_PEER_TIMEOUT_S", "0.1"),
        ("MONARCH_PEER_TIMEOUT_S", "nan"),
        ("MONARCH_SHM", "maybe"),
        ("MONARCH_MAX_CONNECTIONS", "-1"),
        ("MONARCH_MAX_FRAME_BYTES", "1.5"),
        ("MONARCH_LOG_LEVEL", "LOUD"),
        ("MONARCH_RDMA_BACKEND", "rocket"),
        ("MONARCH_RDMA_IB_GID_INDEX", "-2"),
        ("MONARCH_HOSTS", "0"),
        ("MONARCH_HOSTS", ",,"),
    ],
)
def test_bad_environment_value_raises_config_error_naming_variable_and_value(
    monkeypatch, var, value
):
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError) as info:
        get_global_config()
    assert f"{var}={value!r}" in str(info.value)
    assert isinstance(info.value, ValueError)


def test_configure_overrides_the_environment_and_is_additive(monkeypatch):
    monkeypatch.setenv("MONARCH_PEER_TIMEOUT_S", "7")
    monkeypatch.setenv("MONARCH_SHM", "0")
    configure(peer_timeout_s=9.0)
    cfg = configure(max_connections=10)
    assert cfg is get_global_config()
    assert (cfg.peer_timeout_s, cfg.max_connections, cfg.shm) == (9.0, 10, False)
    assert get_runtime_config() == {"peer_timeout_s": 9.0, "max_connections": 10}


def test_configure_unknown_key_raises_value_error_naming_it_and_changes_nothing():
    configure(peer_timeout_s=4.0)
    with pytest.raises(ValueError, match="'peer_timeout'"):
        configure(peer_timeout=5.0, shm=False)
    assert get_runtime_config() == {"peer_timeout_s": 4.0}
    assert get_global_config().shm is True


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("peer_timeout_s", "3"),
        ("shm", 1),
        ("max_connections", 2.0),
        ("rdma_backend", "rocket"),
        ("hosts", 3),
    ],
)
def test_configure_wrong_type_raises_type_error_and_changes_nothing(key, value):
    with pytest.raises(TypeError, match=f"configure\\({key}="):
        configure(**{key: value})
    assert get_runtime_config() == {}


def test_configure_out_of_range_value_raises_config_error_and_changes_nothing():
    with pytest.raises(ConfigError, match=r"configure\(peer_timeout_s=0.1\)"):
        configure(peer_timeout_s=0.1)
    with pytest.raises(ConfigError, match=r"configure\(max_connections=0\)"):
        configure(max_connections=0)
    assert get_runtime_config() == {}
    assert get_global_config().peer_timeout_s == 3.0


def test_configure_accepts_int_for_float_and_str_for_the_cluster_token():
    cfg = configure(peer_timeout_s=4, cluster_token="tok")
    assert cfg.peer_timeout_s == 4.0 and isinstance(cfg.peer_timeout_s, float)
    assert cfg.cluster_token is not None and cfg.cluster_token.get_secret_value() == "tok"


def test_type_error_for_cluster_token_never_shows_its_value():
    with pytest.raises(TypeError) as info:
        configure(cluster_token=123456789)
    assert "123456789" not in str(info.value)


def test_configured_blocks_nest_and_restore_previous_overrides():
    configure(shm=False)
    with configured(peer_timeout_s=5.0) as outer:
        assert (outer.peer_timeout_s, outer.shm) == (5.0, False)
        with configured(peer_timeout_s=6.0, max_connections=7) as inner:
            assert (inner.peer_timeout_s, inner.max_connections, inner.shm) == (6.0, 7, False)
            assert get_global_config() is inner
        assert get_global_config().peer_timeout_s == 5.0
        assert get_global_config().max_connections == 4096
    assert get_runtime_config() == {"shm": False}
    assert get_global_config().peer_timeout_s == 3.0


def test_configured_restores_previous_overrides_when_the_block_raises():
    with pytest.raises(RuntimeError), configured(call_timeout_s=1.5):
        assert get_global_config().call_timeout_s == 1.5
        raise RuntimeError("boom")
    assert get_global_config().call_timeout_s is None
    assert get_runtime_config() == {}


def test_clear_runtime_config_drops_overrides_and_reads_the_environment_again(monkeypatch):
    configure(peer_timeout_s=9.0)
    monkeypatch.setenv("MONARCH_PEER_TIMEOUT_S", "8")
    assert get_global_config().peer_timeout_s == 9.0
    clear_runtime_config()
    assert get_runtime_config() == {}
    assert get_global_config().peer_timeout_s == 8.0


def test_config_is_frozen():
    cfg = get_global_config()
    with pytest.raises(ValidationError):
        cfg.peer_timeout_s = 1.0  # type: ignore[misc]


def test_to_env_round_trips_every_field_with_non_default_values(monkeypatch):
    changed = dict(
        peer_timeout_s=0.75,
        call_timeout_s=2.5,
        connect_timeout_s=1.25,
        spawn_timeout_s=4.0,
        proc_stop_timeout_s=0.0,
        max_envelope_bytes=4097,
        max_frame_bytes=8193,
        max_held_frames=3,
        max_held_bytes=5,
        max_connections=6,
        shm=False,
        shm_min_bytes=4096,
        shm_pool_max_bytes=0,
        zygote=False,
        prefix_python_logs_with_actor=False,
        log_level="INFO",
        hosts="h1,h2",
        cluster_token="tok en=1",
        capture_frames_dir="/tmp/monarch frames",
        tls_ca="/etc/monarch/ca.pem",
        tls_cert="/etc/monarch/cert.pem",
        tls_key="/etc/monarch/key.pem",
        admin=False,
        tensor_collective_timeout_s=7.5,
        tensor_store_host="10.0.0.2",
        rdma_backend="cma",
        rdma_control="actor",
        rdma_tcp_host="10.0.0.1",
        rdma_ib_device="rxe0",
        rdma_ib_gid_index=3,
        rdma_drop_grace_s=0.125,
        rdma_tcp_max_connections=2,
        rdma_tcp_idle_timeout_s=0.5,
        rdma_tcp_max_request_bytes=2048,
        rdma_cma_ptracer=-1,
    )
    # Monarch's knobs round-trip in test_config_knobs.py
    assert set(changed) == set(MonarchConfig.model_fields) - set(KNOB_EFFECT), "a new setting needs a value here"
    parent = configure(**changed)
    env = to_env()
    clear_runtime_config()
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert get_global_config() == parent


def test_to_env_makes_a_child_process_read_the_parents_settings(tmp_path):
    configure(peer_timeout_s=7.25, call_timeout_s=None, shm=False, cluster_token="s3cret")
    parent_env = to_env()
    # the child inherits conflicting values; the parent's settings must win, unset ones included
    env = {**os.environ, "MONARCH_CALL_TIMEOUT_S": "99", "MONARCH_SHM": "1", **parent_env}
    code = (
        "import json; from monarch.config import get_global_config, to_env\n"
        "cfg = get_global_config()\n"
        "print(json.dumps({'env': to_env(), 'peer': cfg.peer_timeout_s, 'call': cfg.call_timeout_s,"
        " 'shm': cfg.shm, 'token': cfg.cluster_token.get_secret_value()}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    child = json.loads(out.stdout)
    assert child["env"] == parent_env
    assert (child["peer"], child["call"], child["shm"], child["token"]) == (
        7.25,
        None,
        False,
        "s3cret",
    )


def test_importing_monarch_config_reads_nothing_and_imports_no_heavy_module():
    code = (
        "import sys, threading, monarch.config as c\n"
        "heavy = [m for m in ('torch', 'jinja2', 'numpy', 'monarch.actor', 'monarch._mesh', 'capnp')"
        " if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "assert c._state.config is None, 'environment read at import'\n"
        "assert threading.active_count() == 1, threading.enumerate()\n"
    )
    env = {**os.environ, "MONARCH_PEER_TIMEOUT_S": "not a number"}  # would raise if read
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=60)


def test_docs_settings_table_matches_the_model():
    doc = (ROOT / "docs" / "configuration.md").read_text()
    found = re.search(r"<!-- settings-table:begin -->\n(.*?)<!-- settings-table:end -->", doc, re.S)
    assert found, "docs/configuration.md lost its settings-table markers"
    assert found.group(1) == config._settings_markdown(), (
        "docs/configuration.md is stale: paste the output of `monarch config --markdown` "
        "between its settings-table markers"
    )


def test_every_monarch_variable_read_in_the_repository_is_documented():
    doc = (ROOT / "docs" / "configuration.md").read_text()
    documented = set(re.findall(r"`(MONARCH_[A-Z0-9_]+)`", doc))
    mine = {Path(__file__).name, "test_cli.py", "test_config_knobs.py"}
    used: dict[str, str] = {}
    for folder in ("runtime", "rdma", "generator", "benchmarks", "examples", "tests"):
        for path in (ROOT / folder).rglob("*"):
            if path.suffix not in {".py", ".sh"} or path.name in mine:
                continue
            for name in re.findall(
                r"\bMONARCH_[A-Z0-9_]*[A-Z0-9]\b", path.read_text(errors="replace")
            ):
                used.setdefault(name, str(path.relative_to(ROOT)))
    missing = {name: where for name, where in used.items() if name not in documented}
    assert not missing, f"undocumented MONARCH_ variables (add a setting or a docs row): {missing}"
    settings = {config.env_var(n) for n in MonarchConfig.model_fields}
    assert not settings & set(config.BOOTSTRAP_VARIABLES)


def test_runtime_defaults_without_config_import_equal_the_config_defaults():
    # a client with no MONARCH_* variable and no configure() starts on RuntimeSettings()
    # without importing pydantic: those defaults must be the documented ones
    import dataclasses

    from monarch._mesh.settings import RuntimeSettings, settings_from_config

    built, token = settings_from_config()  # monarch.config is imported here: the full path
    assert token is None
    assert dataclasses.replace(built, child_env={}) == RuntimeSettings()


def test_the_fast_path_knows_every_setting_variable_and_no_bootstrap_one():
    from monarch._mesh.settings import SETTING_VARIABLES

    every = {config.env_var(n).upper() for n in MonarchConfig.model_fields}
    assert SETTING_VARIABLES == every - {"MONARCH_CLUSTER_TOKEN"}
    assert not SETTING_VARIABLES & {*config.BOOTSTRAP_VARIABLES, "MONARCH_CLUSTER_TOKEN"}


def test_client_with_no_monarch_variable_starts_without_importing_pydantic():
    code = (
        "import sys\n"
        "import monarch._mesh.runtime\n"  # the composition root imports no pydantic either
        "from monarch._mesh.settings import RuntimeSettings, settings_from_config\n"
        "settings, token = settings_from_config()\n"
        "assert settings == RuntimeSettings() and token is None\n"
        "assert 'pydantic' not in sys.modules and 'monarch.config' not in sys.modules, 'imported'\n"
        "import os; os.environ['MONARCH_CLUSTER_TOKEN'] = 'tok'; os.environ['MONARCH_ROOT_ADDR'] = 'unix:/x'\n"
        "settings, token = settings_from_config()\n"
        "assert token == b'tok' and 'pydantic' not in sys.modules, token\n"
        "os.environ['MONARCH_BENCH_RUN_TOKEN'] = 'x'\n"  # not a setting: still the fast path
        "settings, token = settings_from_config()\n"
        "assert 'pydantic' not in sys.modules, 'a MONARCH_ variable that is no setting imported it'\n"
        "os.environ['MONARCH_PEER_TIMEOUT_S'] = '7'\n"
        "settings, _ = settings_from_config()\n"
        "assert settings.limits.peer_timeout_s == 7.0, settings\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("MONARCH_")}
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=60)


def test_a_function_naming_the_config_module_pickles_by_reference():
    import pickle

    import cloudpickle

    def reads_a_setting() -> object:
        return config.prefix_python_logs_with_actor

    assert pickle.loads(pickle.dumps(config)) is config
    assert pickle.loads(cloudpickle.dumps(reads_a_setting))() == config.prefix_python_logs_with_actor
