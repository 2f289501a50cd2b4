"""``monarch dashboard`` on real procs: the page the admin endpoint serves, rendered by a real
headless chromium (``--dump-dom`` after a virtual time budget) against this process's 4-proc mesh."""

from __future__ import annotations

import html.parser
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.request

import pytest

from tests.runtime.failure_log import FailureLog
from tests.tools.conftest import RunningMesh

CHROMIUM = shutil.which("chromium")


class _Elements(html.parser.HTMLParser):
    """Every element's attributes, from a dumped DOM."""

    def __init__(self) -> None:
        super().__init__()
        self.elements: list[dict[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append({"tag": tag, **dict(attrs)})


def _dom(url: str, tmp_path, budget_ms: int = 4000) -> str:
    assert CHROMIUM is not None
    out = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'chromium-profile'}",
            f"--virtual-time-budget={budget_ms}",
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def _url(running_mesh: RunningMesh) -> str:
    out = running_mesh.monarch("dashboard", "--no-open")
    assert out.returncode == 0, out.stderr
    url = out.stdout.strip()
    assert url.startswith(running_mesh.admin["url"] + "/dashboard?token="), url
    return url


def _actors(dom: str) -> dict[str, str | None]:
    p = _Elements()
    p.feed(dom)
    return {
        e["data-actor-id"] or "": e.get("data-status")
        for e in p.elements
        if e.get("data-actor-id") and e["tag"] == "div"
    }


def _procs(dom: str) -> dict[str, str | None]:
    p = _Elements()
    p.feed(dom)
    return {
        e["data-proc-id"] or "": e.get("data-status") for e in p.elements if e.get("data-proc-id")
    }


def test_monarch_dashboard_prints_a_url_that_serves_the_page(running_mesh: RunningMesh) -> None:
    url = _url(running_mesh)
    with urllib.request.urlopen(url, timeout=10) as r:
        page = r.read().decode()
    assert r.status == 200 and "monarch dashboard" in page and "/v1/status" in page
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(url.split("?")[0], timeout=10)
    assert err.value.code == 401


@pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium on PATH (Debian: apt-get install chromium)"
)
def test_headless_chromium_renders_the_live_actors_and_a_killed_proc_as_failed(
    running_mesh: RunningMesh, failures: FailureLog, tmp_path
) -> None:
    url = _url(running_mesh)
    for _ in range(5):
        running_mesh.workers.ping.call().get(10.0)
    dom = _dom(url, tmp_path)
    actors = _actors(dom)
    workers = {a: s for a, s in actors.items() if "workers" in a}
    assert len(workers) == 4 and set(workers.values()) == {"running"}, actors
    assert sum("more0" in a for a in actors) == 4
    procs = _procs(dom)  # with failed procs that earlier tests of this process left behind
    running = [p for p, st in procs.items() if st == "running"]
    assert len(running) == 4 and set(procs.values()) <= {"running", "failed"}, procs
    assert 'id="plot"' in dom and "<polyline" in dom, "no rate plot"
    assert re.search(r"\d+ procs \(\d+ failed\)", dom), dom[
        -2000:
    ]  # other tests may have left failed procs

    status = running_mesh.monarch("status", "--json")
    import json

    victim = next(
        p
        for h in json.loads(status.stdout)["hosts"]
        for p in h["procs"]
        if p["rank"] == 1 and p["id"] in running
    )
    os.kill(victim["pid"], signal.SIGKILL)
    failures.wait_for("workers")
    deadline = time.monotonic() + 60.0
    while True:
        dom = _dom(url, tmp_path, budget_ms=2000)
        if _procs(dom).get(victim["id"]) == "failed":
            break
        assert time.monotonic() < deadline, f"the killed proc was never shown failed: {_procs(dom)}"
    procs = {p: st for p, st in _procs(dom).items() if p in running}  # this mesh's four procs
    assert sorted(procs.values()) == ["failed", "running", "running", "running"], _procs(dom)
    failed = re.search(r"\((\d+) failed\)", dom)
    assert failed and int(failed.group(1)) >= 1 and "signal 9" in dom
