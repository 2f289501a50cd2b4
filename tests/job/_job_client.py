"""A client process for the job tests: loads a job spec (``FILE.py:NAME``), takes its state,
spawns 2 procs per host on its first mesh, calls an endpoint on every rank and prints one JSON
line: where each rank ran, the job's agent addresses and timings.

Usage: python -m tests.job._job_client SPEC CACHE [--kill] [--hold]
  --kill: kill the job before exiting; --hold: then wait for stdin to close (the test kills us).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time

from monarch.actor import Actor, endpoint
from monarch.job.cli import load_spec


class Where(Actor):
    @endpoint
    def where(self) -> dict[str, object]:
        return {"hostname": socket.gethostname(), "pid": os.getpid()}


def main() -> None:
    spec, cache = sys.argv[1], sys.argv[2]
    started = time.monotonic()
    job = load_spec(spec)
    state = job.state(cached_path=cache)
    applied = time.monotonic() - started
    mesh = next(iter(state.meshes.values()))
    procs = mesh.spawn_procs(per_host={"gpus": 2})
    ranks = [v for _, v in procs.spawn("where", Where).where.call().get(120.0).items()]
    answered = time.monotonic() - started
    out = {
        "ranks": ranks,
        "addresses": job._addresses,
        "job_id": job.job_id,
        "apply_s": applied,
        "first_call_s": answered,
    }
    if hasattr(job, "slurm_job_id"):
        out["slurm_job_id"] = job.slurm_job_id
    procs.stop().get(30.0)
    if "--kill" in sys.argv:
        job.kill(cache)
    print(json.dumps(out), flush=True)
    if "--hold" in sys.argv:
        sys.stdin.read()


if __name__ == "__main__":
    main()
