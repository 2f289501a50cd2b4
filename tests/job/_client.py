"""A client process for tests/job: applies a ProcessJob, spawns procs, prints what it started, then waits.

Usage: python -m tests.job._client CACHE_PATH
"""

from __future__ import annotations

import json
import os
import sys

from monarch.actor import Actor, endpoint
from monarch.job import ProcessJob


class Pid(Actor):
    @endpoint
    def pid(self) -> int:
        return os.getpid()


def main() -> None:
    job = ProcessJob({"hosts": 2})
    state = job.state(cached_path=sys.argv[1])
    procs = state.hosts.spawn_procs(per_host={"gpus": 2})
    pids = procs.spawn("pid", Pid).pid.call().get(60.0)
    print(
        json.dumps(
            {"agents": job._pids, "procs": [p for _, p in pids.items()], "job_id": job.job_id}
        ),
        flush=True,
    )
    sys.stdin.read()  # until the test kills us


if __name__ == "__main__":
    main()
