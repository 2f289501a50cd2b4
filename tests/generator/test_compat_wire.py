"""A compatible schema change proven on the wire: old client x new server and the reverse."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_store_versions_pass_compat() -> None:
    res = subprocess.run(
        [sys.executable, "-m", "monarch.generator.cli", "compat", "store_v1.capnp", "store_v2.capnp"],
        cwd=Path(__file__).parent / "compat", capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.parametrize(("client", "server"), [("1", "2"), ("2", "1")])
def test_client_of_one_version_calls_server_of_the_other_on_real_procs(
    client: str, server: str
) -> None:
    # one process per direction: a process can load only one version of a schema file id
    res = subprocess.run(
        [sys.executable, "-m", "tests.generator.compat_wire", client, server],
        cwd=ROOT, capture_output=True, text=True, check=False, timeout=180,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr[-4000:]
    assert f"ok: v{client} client, v{server} server" in res.stdout
