"""The ``monarch`` console script, run as a user runs it: the installed script in a subprocess."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from monarch.config import MonarchConfig, env_var


def _script() -> str:
    found = shutil.which("monarch") or shutil.which(
        "monarch", path=str(Path(sys.executable).parent)
    )
    assert found, "the monarch console script is not installed (pip install -e .)"
    return found


def _run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.upper().startswith("MONARCH_")}
    return subprocess.run(
        [_script(), *args],
        env={**base, "COLUMNS": "200", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_version_prints_the_installed_distribution_version():
    out = _run("--version")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"monarch-idl {metadata.version('monarch-idl')}"


def test_help_describes_the_app_and_lists_the_config_command():
    out = _run("--help")
    assert out.returncode == 0, out.stderr
    assert "Usage: monarch" in out.stdout
    assert "--version" in out.stdout
    assert "config" in out.stdout


def test_config_json_shows_environment_values_and_hides_the_cluster_token():
    out = _run("config", "--json", MONARCH_PEER_TIMEOUT_S="7.5", MONARCH_CLUSTER_TOKEN="s3cret")
    assert out.returncode == 0, out.stderr
    shown = json.loads(out.stdout)
    assert set(shown) == set(MonarchConfig.model_fields)
    assert shown["peer_timeout_s"] == 7.5
    assert shown["cluster_token"] == "<hidden>"
    assert shown["call_timeout_s"] is None
    assert "s3cret" not in out.stdout


def test_config_table_lists_every_setting_with_its_source():
    out = _run("config", MONARCH_SHM="0")
    assert out.returncode == 0, out.stderr
    for name in MonarchConfig.model_fields:
        assert env_var(name) in out.stdout  # Monarch's knobs: Monarch's variables
    shm_row = next(line for line in out.stdout.splitlines() if "MONARCH_SHM " in line)
    assert "False" in shm_row and "environment" in shm_row


@pytest.mark.parametrize("args", [("config",), ("config", "--json")])
def test_config_with_a_bad_environment_value_exits_2_naming_the_variable(args):
    out = _run(*args, MONARCH_MAX_CONNECTIONS="lots")
    assert out.returncode == 2
    assert "MONARCH_MAX_CONNECTIONS='lots'" in " ".join(out.stderr.split())
    assert "Traceback" not in out.stderr


def test_config_markdown_prints_the_docs_table():
    out = _run("config", "--markdown")
    assert out.returncode == 0, out.stderr
    doc = (Path(__file__).resolve().parents[1] / "docs" / "configuration.md").read_text()
    assert out.stdout in doc


def test_shell_completion_completes_the_tools_commands():
    out = subprocess.run(
        [_script()],
        env={
            **os.environ,
            "_MONARCH_COMPLETE": "complete_bash",
            "COMP_WORDS": "monarch st",
            "COMP_CWORD": "1",
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["status"]
    assert "--show-completion" in _run("--help").stdout


@pytest.mark.parametrize(
    "command", ["status", "exec", "env", "top", "dashboard", "debug", "job", "host"]
)
def test_every_command_has_help(command):
    out = _run(command, "--help")
    assert out.returncode == 0, out.stderr
    assert f"Usage: monarch {command}" in out.stdout
