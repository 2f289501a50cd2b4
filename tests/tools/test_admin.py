"""The client's admin endpoint and ``monarch status`` / ``monarch exec`` on a real 4-proc mesh:
real HTTP with the token, the real CLI as subprocesses pointed at this test process's client."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Any

import pytest

from tests.tools.conftest import ACTORS_PER_PROC, RunningMesh


def _get(m: RunningMesh, path: str, token: str | None = "ok", timeout_s: float = 30.0) -> Any:
    headers = (
        {"Authorization": f"Bearer {m.admin['token'] if token == 'ok' else token}"} if token else {}
    )
    req = urllib.request.Request(m.admin["url"] + path, headers=headers)
    with urllib.request.urlopen(req, timeout=timeout_s) as resp:
        return json.load(resp)


def _user_actors(proc: dict[str, Any]) -> list[dict[str, Any]]:
    return [a for a in proc["actors"] if not a["system"]]


def test_admin_file_is_private_and_names_this_client(running_mesh: RunningMesh) -> None:
    st = os.stat(running_mesh.admin_file)
    assert st.st_mode & 0o777 == 0o600
    assert os.stat(os.path.dirname(running_mesh.admin_file)).st_mode & 0o777 == 0o700
    assert running_mesh.admin["pid"] == os.getpid()
    assert running_mesh.admin["url"].startswith("http://127.0.0.1:")


@pytest.mark.parametrize("token", [None, "wrong"])
def test_requests_without_the_right_token_get_401(
    running_mesh: RunningMesh, token: str | None
) -> None:
    with pytest.raises(urllib.error.HTTPError) as err:
        _get(running_mesh, "/v1/status", token=token)
    assert err.value.code == 401


def test_unknown_route_is_404_wrong_method_405_and_both_401_without_the_token(
    running_mesh: RunningMesh,
) -> None:
    def code(path: str, token: str | None, method: str = "GET") -> int:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        req = urllib.request.Request(
            running_mesh.admin["url"] + path, headers=headers, method=method
        )
        try:
            with urllib.request.urlopen(req, timeout=30.0) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as err:
            return err.code

    token = running_mesh.admin["token"]
    assert code("/v1/nope", token) == 404
    assert code("/v1/status", token, "POST") == 405
    assert code("/v1/nope", None) == 401 and code("/v1/status", None, "POST") == 401


def test_token_in_the_query_is_accepted_for_browser_pages(running_mesh: RunningMesh) -> None:
    doc = _get(running_mesh, f"/v1/ping?token={running_mesh.admin['token']}", token=None)
    assert doc["ok"] is True and doc["pid"] == os.getpid()


def test_status_lists_every_proc_and_actor_with_counters(running_mesh: RunningMesh) -> None:
    # a handler is counted once it has finished, just after its reply is sent: after the reply
    # of the fixture's ping and of these two, the first two are counted for sure (one at a time)
    running_mesh.workers.ping.call().get(30.0)
    running_mesh.workers.ping.call().get(30.0)
    doc = _get(running_mesh, "/v1/status")
    assert (
        doc["client"]["pid"] == os.getpid()
        and doc["client"]["name"] == "root"
        and doc["client"]["admin_version"] == 1
    )
    procs = [p for h in doc["hosts"] for p in h["procs"] if p["status"] == "running"]
    assert len(procs) == 4
    assert sorted(p["rank"] for p in procs) == [0, 1, 2, 3]
    assert len({p["id"] for p in procs}) == 4
    assert {p["pid"] for p in procs} == {h.pid for h in _children(running_mesh)}
    for p in procs:
        actors = _user_actors(p)
        assert len(actors) == ACTORS_PER_PROC
        w = next(a for a in actors if a["mesh"] == "workers")
        assert w["status"] == "running" and w["class"] == "tests.tools.conftest.Worker"
        assert w["messages_handled"] >= 2 and w["last_endpoint"] == "ping" and w["failures"] == 0
        assert w["queue_depth"] == 0 and w["coords"] == {"gpus": p["rank"]}
        assert any(a["system"] for a in p["actors"])  # the admin agent, marked
    meshes = {m["name"]: m for m in doc["meshes"]}
    assert meshes["workers"] == {
        **meshes["workers"],
        "kind": "actor",
        "extent": {"gpus": 4},
        "alive": 4,
        "size": 4,
    }
    assert any(m["kind"] == "proc" and m["alive"] >= 4 for m in doc["meshes"])


def test_failures_counter_counts_endpoint_exceptions(running_mesh: RunningMesh) -> None:
    with pytest.raises(Exception, match="boom"):
        running_mesh.workers.slice(gpus=2).boom.call_one().get(30.0)
    doc = _get(running_mesh, "/v1/status")
    rows = [
        a
        for h in doc["hosts"]
        for p in h["procs"]
        for a in p["actors"]
        if a["mesh"] == "workers" and a["rank"] == 2
    ]
    assert (
        rows
        and rows[0]["failures"] == 1
        and rows[0]["last_endpoint"] == "boom"
        and rows[0]["status"] == "running"
    )


def _children(m: RunningMesh) -> list[Any]:
    from monarch._mesh import current

    rt = current.installed()
    addrs = set(m.procs._addrs)
    return [h for a, h in rt.procs.children.items() if a in addrs]


def test_killed_proc_shows_as_failed_with_its_cause(
    running_mesh: RunningMesh, failures: Any
) -> None:
    victim = _children(running_mesh)[1]
    os.kill(victim.pid, signal.SIGKILL)
    failures.wait_for("workers")
    doc = _get(running_mesh, "/v1/status")
    procs = {p["pid"]: p for h in doc["hosts"] for p in h["procs"]}
    dead = procs[victim.pid]
    assert dead["status"] == "failed" and "SIGKILL" in dead["failure"]
    assert {a["status"] for a in _user_actors(dead)} == {"failed"}
    others = [
        p
        for pid, p in procs.items()
        if pid in {h.pid for h in _children(running_mesh)} and pid != victim.pid
    ]
    assert len(others) == 3 and all(p["status"] == "running" for p in others)
    assert {m["name"]: m for m in doc["meshes"]}["workers"]["alive"] == 3


def test_a_hung_proc_answers_as_unresponsive_not_a_hang(running_mesh: RunningMesh) -> None:
    victim = _children(running_mesh)[0]
    _get(running_mesh, "/v1/status")  # agents spawned and answered once
    os.kill(victim.pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        doc = _get(running_mesh, "/v1/status")
        took = time.monotonic() - t0
    finally:
        os.kill(victim.pid, signal.SIGCONT)
    p = next(p for h in doc["hosts"] for p in h["procs"] if p["pid"] == victim.pid)
    assert p["unresponsive"] is True and p["status"] == "running"
    assert took < 5.0


def test_status_of_64_actors_is_fast(running_mesh: RunningMesh) -> None:
    extra = [running_mesh.procs.spawn(f"many{i}", _worker()) for i in range(16 - ACTORS_PER_PROC)]
    for m in extra:
        m.ping.call().get(60.0)
    _get(running_mesh, "/v1/status")
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        doc = _get(running_mesh, "/v1/status")
        times.append(time.perf_counter() - t0)
    n = sum(
        len(_user_actors(p)) for h in doc["hosts"] for p in h["procs"] if p["status"] == "running"
    )
    assert n == 64
    print(
        f"GET /v1/status, 4 procs x 16 actors: median {sorted(times)[2] * 1000:.1f} ms (collect_ms {doc['collect_ms']:.1f})"
    )
    assert sorted(times)[2] < 0.2


def _worker() -> Any:
    from tests.tools.conftest import Worker

    return Worker


def test_stack_of_a_proc_is_a_py_spy_dump_or_a_clear_error(running_mesh: RunningMesh) -> None:
    doc = _get(running_mesh, "/v1/status")
    proc = next(p for h in doc["hosts"] for p in h["procs"] if p["status"] == "running")
    res = _get(running_mesh, f"/v1/stack?proc={proc['id']}")
    assert res["proc"] == proc["id"]
    if "error" in res:
        assert "py-spy" in res["error"]
    else:
        assert res["pid"] == proc["pid"] and "Thread" in res["text"]


def test_stack_of_an_unknown_proc_is_404(running_mesh: RunningMesh) -> None:
    with pytest.raises(urllib.error.HTTPError) as err:
        _get(running_mesh, "/v1/stack?proc=nope")
    assert err.value.code == 404


def test_monarch_status_json_is_the_status_document(running_mesh: RunningMesh) -> None:
    r = running_mesh.monarch("status", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["client"]["pid"] == os.getpid()
    assert (
        sum(
            len(_user_actors(p))
            for h in doc["hosts"]
            for p in h["procs"]
            if p["status"] == "running"
        )
        == 4 * ACTORS_PER_PROC
    )


def test_monarch_status_prints_the_tree(running_mesh: RunningMesh) -> None:
    r = running_mesh.monarch("status")
    assert r.returncode == 0, r.stderr
    assert "workers" in r.stdout and "running" in r.stdout and f"pid {os.getpid()}" in r.stdout


def test_monarch_exec_runs_a_command_on_every_proc(running_mesh: RunningMesh) -> None:
    r = running_mesh.monarch("exec", "--json", "--", "sh", "-c", "echo pid=$PPID; echo err >&2")
    assert r.returncode == 0, r.stderr
    results = json.loads(r.stdout)
    assert [x["rank"] for x in results] == [0, 1, 2, 3]
    assert {x["stdout"].strip() for x in results} == {
        f"pid={h.pid}" for h in _children(running_mesh)
    }
    assert all(x["stderr"] == "err\n" and x["returncode"] == 0 for x in results)


def test_monarch_exec_c_runs_python_inside_the_procs(running_mesh: RunningMesh) -> None:
    r = running_mesh.monarch("exec", "-c", "import os; print('in', os.getpid())")
    assert r.returncode == 0, r.stderr
    for h in _children(running_mesh):
        assert f"in {h.pid}" in r.stdout
    assert r.stdout.count("rank ") == 4


def test_monarch_exec_reports_failures_with_exit_1(running_mesh: RunningMesh) -> None:
    r = running_mesh.monarch("exec", "--json", "-c", "raise SystemExit(3)")
    assert r.returncode == 1
    assert {x["returncode"] for x in json.loads(r.stdout)} == {3}
    r = running_mesh.monarch("exec", "--json", "-c", "1/0")
    assert r.returncode == 1 and all(
        "ZeroDivisionError" in x["stderr"] for x in json.loads(r.stdout)
    )


def test_exec_timeout_kills_the_command(running_mesh: RunningMesh) -> None:
    r = running_mesh.monarch("exec", "--json", "--timeout", "0.5", "--", "sleep", "30")
    assert r.returncode == 1
    assert all("timed out" in x["error"] for x in json.loads(r.stdout))


def test_exec_rejects_bad_requests(running_mesh: RunningMesh) -> None:
    req = urllib.request.Request(
        running_mesh.admin["url"] + "/v1/exec",
        data=b'{"code": "1", "argv": ["x"]}',
        method="POST",
        headers={"Authorization": f"Bearer {running_mesh.admin['token']}"},
    )
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=30)
    assert err.value.code == 400


def test_monarch_without_a_client_says_so_and_exits_1(tmp_path: Any) -> None:
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    env.pop("MONARCH_ADMIN_FILE", None)
    r = subprocess.run(
        [sys.executable, "-c", "from monarch.cli import main; main()", "status"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 1 and "no running Monarch client" in r.stderr


def test_discovery_finds_this_client_by_pid(running_mesh: RunningMesh) -> None:
    from monarch.tools.admin_client import AdminNotFound, find_admin

    env = os.environ.pop("MONARCH_ADMIN_FILE", None)
    try:
        assert find_admin(os.getpid()).url == running_mesh.admin["url"]
        with pytest.raises(AdminNotFound):
            find_admin(2**22 + 12345)
    finally:
        if env is not None:
            os.environ["MONARCH_ADMIN_FILE"] = env


def test_admin_off_binds_nothing_and_writes_no_file(tmp_path: Any) -> None:
    code = (
        "import os, glob\n"
        "from monarch.actor import this_host\n"
        "p = this_host().spawn_procs(per_host={'gpus': 1}); p.initialized.get(60)\n"
        "from monarch._mesh import current\n"
        "rt = current.installed(); print(rt.admin, os.listdir(rt.runtime_dir).count('admin.json'))\n"
        "p.stop().get(30)\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "MONARCH_ADMIN": "0"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["None", "0"]


def test_a_client_serving_status_imports_no_web_or_cli_library() -> None:
    # the endpoint is stdlib only: answering a request imports none of them into the client
    code = (
        "import sys, urllib.request, json\n"
        "from monarch.actor import this_host\n"
        "p = this_host().spawn_procs(per_host={'gpus': 1}); p.initialized.get(60)\n"
        "from monarch._mesh import current\n"
        "a = current.installed().admin\n"
        "req = urllib.request.Request(a.url + '/v1/status', "
        "headers={'Authorization': 'Bearer ' + a.token})\n"
        "doc = json.load(urllib.request.urlopen(req, timeout=60))\n"
        "assert sum(len(h['procs']) for h in doc['hosts']) == 1, doc\n"
        "print(sorted(m for m in sys.modules\n"
        "    if m.split('.')[0] in ('aiohttp', 'typer', 'rich', 'pydantic')))\n"
        "p.stop().get(30)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


_FRESH_CLIENT = """
import os, sys
from monarch.actor import Actor, endpoint, this_host

class Stepper(Actor):
    @endpoint
    def step(self) -> int:
        return os.getpid()

procs = this_host().spawn_procs(per_host={"gpus": 2})
meshes = [procs.spawn(f"stepper{i}", Stepper) for i in range(3)]
pids = set()
for m in meshes:
    for _ in range(3):
        pids.update(m.step.call().get(60.0).values())
print("READY", *sorted(pids), flush=True)
sys.stdin.readline()  # until the test closes our stdin
procs.stop().get(30.0)
"""


def test_a_fresh_clients_first_status_shows_its_live_actors() -> None:
    # the first request a client ever gets (no admin agent spawned yet, nothing cached) answers
    # with every live actor and its counters, as later ones do
    env = {k: v for k, v in os.environ.items() if k != "MONARCH_ADMIN_FILE"}
    client = subprocess.Popen(
        [sys.executable, "-c", _FRESH_CLIENT],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert client.stdout is not None
        line = client.stdout.readline().split()
        assert line[:1] == ["READY"], f"the client did not start: {line!r}"
        proc_pids = {int(x) for x in line[1:]}
        r = subprocess.run(
            [
                *(sys.executable, "-c", "from monarch.cli import main; main()"),
                *("status", "--json", "--pid", str(client.pid)),
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        assert client.stdin is not None
        client.stdin.close()
        try:
            client.wait(30)
        except subprocess.TimeoutExpired:
            client.kill()
            client.wait(10)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["client"]["pid"] == client.pid
    procs = [p for h in doc["hosts"] for p in h["procs"]]
    assert {p["pid"] for p in procs} == proc_pids and len(procs) == 2
    assert all(p["status"] == "running" and "unresponsive" not in p for p in procs)
    for p in procs:
        actors = _user_actors(p)
        assert sorted(a["mesh"] for a in actors) == ["stepper0", "stepper1", "stepper2"]
        for a in actors:
            # 3 calls each; a handler is counted just after its reply is sent, so the last
            # may not be counted yet
            assert a["status"] == "running" and a["last_endpoint"] == "step"
            assert 2 <= a["messages_handled"] <= 3 and a["failures"] == 0
            assert a["coords"] == {"gpus": p["rank"]}
        assert [a["class"] for a in p["actors"] if a["system"]] == [
            "monarch._mesh.admin_agent.AdminAgent"
        ]
    meshes = {m["name"]: m for m in doc["meshes"]}
    for name in ("stepper0", "stepper1", "stepper2"):
        assert meshes[name]["extent"] == {"gpus": 2} and meshes[name]["alive"] == 2
