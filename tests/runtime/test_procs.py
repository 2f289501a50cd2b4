"""Starting procs (runtime/_mesh/procs.py) in a client of its own: every fork request of a spawn
is sent before any answer is awaited, refused forks fall back to fresh interpreters, and a
client that uses ``monarch.config`` has the fork server import it before forking its procs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_CLIENT = textwrap.dedent(
    """
    import json, os, sys
    from monarch._mesh import zygote
    from monarch.actor import Actor, endpoint, this_host

    submitted = []  # (preload, answers already collected) per fork request
    collected = []
    submit, result = zygote.ZygoteClient.submit, zygote.ZygoteClient.result

    def recording_submit(self, *args, **kwargs):
        submitted.append([list(kwargs.get("preload", ())), len(collected)])
        return submit(self, *args, **kwargs)

    def recording_result(self, rid, *args, **kwargs):
        collected.append(rid)
        return result(self, rid, *args, **kwargs)

    zygote.ZygoteClient.submit = recording_submit
    zygote.ZygoteClient.result = recording_result

    class Where(Actor):
        @endpoint
        def where(self) -> dict:
            return {"ppid": os.getppid(), "omp": os.environ.get("OMP_NUM_THREADS")}

    host = this_host()
    out = {"client": os.getpid()}
    for label, env in (("refused", {"OMP_NUM_THREADS": "3"}), ("forked", None)):
        procs = host.spawn_procs(per_host={"gpus": 3}, env=env)
        try:
            out[label] = list(procs.spawn("w", Where).where.call().get(timeout=60).values())
        finally:
            procs.stop().get(timeout=30)
    out["submitted"] = submitted
    print(json.dumps(out), flush=True)
    """
)


def _run_client(extra_env: dict[str, str]) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MONARCH_ZYGOTE")}
    env = {k: v for k, v in env.items() if not k.startswith("MONARCH_")}
    env.update(extra_env)
    done = subprocess.run(
        [sys.executable, "-c", _CLIENT], env=env, cwd=ROOT, capture_output=True, timeout=180
    )
    assert done.returncode == 0, done.stderr.decode()
    return json.loads(done.stdout.decode().strip().splitlines()[-1])


def test_a_spawn_sends_every_fork_request_first_and_starts_refused_procs_afresh() -> None:
    out = _run_client({})
    refused, forked = out["refused"], out["forked"]
    # OMP_NUM_THREADS is read at interpreter start: the fork server refuses, the client starts
    # each of those procs itself (its own children), with the value asked for
    assert [w["ppid"] for w in refused] == [out["client"]] * 3
    assert [w["omp"] for w in refused] == ["3"] * 3
    # the others are forked by the one fork server
    assert len({w["ppid"] for w in forked}) == 1 and forked[0]["ppid"] != out["client"]
    # 3 + 3 requests; within each spawn, all were sent before the first answer was collected
    assert [n for _, n in out["submitted"]] == [0, 0, 0, 3, 3, 3]
    # a client on the defaults never loads monarch.config, nor asks the fork server to
    assert all(preload == [] for preload, _ in out["submitted"])


def test_a_client_with_settings_has_the_fork_server_import_monarch_config_for_its_procs() -> None:
    # a setting in the environment: the client resolves it with monarch.config and passes the
    # job's settings to its procs, which then import monarch.config at start
    out = _run_client({"MONARCH_PROC_STOP_TIMEOUT_S": "5"})
    assert all(preload == ["monarch.config"] for preload, _ in out["submitted"])
    assert len({w["ppid"] for w in out["forked"]}) == 1


_EXITS_AT_ONCE = textwrap.dedent(
    """
    import json, os
    import monarch.actor
    from monarch.actor import Actor, endpoint, this_host

    failures = []
    monarch.actor.unhandled_fault_hook = failures.append

    class Where(Actor):
        @endpoint
        def where(self) -> int:
            return os.getpid()

    def leave():
        os._exit(3)

    procs = this_host().spawn_procs(per_host={"gpus": 4}, bootstrap=leave)
    try:
        procs.spawn("w", Where).where.call().get(timeout=60)
        print(json.dumps({"error": None}), flush=True)
    except Exception as exc:
        print(json.dumps({"error": str(exc)}), flush=True)
    """
)


def test_procs_that_exit_at_once_are_reported_with_their_exit_status() -> None:
    # procs that die during start, perhaps before the client registered them (a spawn registers
    # its procs only once every fork request is sent): the status the fork server saw is
    # reported, not a lost connection
    env = {k: v for k, v in os.environ.items() if not k.startswith("MONARCH_")}
    done = subprocess.run(
        [sys.executable, "-c", _EXITS_AT_ONCE], env=env, cwd=ROOT, capture_output=True, timeout=180
    )
    assert done.returncode == 0, done.stderr.decode()
    error = json.loads(done.stdout.decode().strip().splitlines()[-1])["error"]
    assert error is not None and "exited with non-zero code 3" in error, error
