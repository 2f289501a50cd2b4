"""A process the client starts by other means than spawn_procs (multiprocessing's ``spawn``)
joins the job: it can call the client's actors with the meshes it was handed."""

from __future__ import annotations

import multiprocessing as mp
from typing import Any

from monarch.testing import proc_mesh

from tests.runtime.actors import Counter


def _call_from_child(mesh: Any, out: Any) -> None:
    try:
        out.put(("ok", mesh.value.call_one().get(timeout=20)))
    except Exception as exc:  # reported to the parent, which asserts on it
        out.put(("error", f"{type(exc).__name__}: {exc}"))


def test_a_multiprocessing_spawn_child_calls_the_clients_actors_with_the_generated_token() -> None:
    # no cluster token configured: the client makes one; a child started by multiprocessing
    # (not by the runtime) must get it, or every link it dials is refused at authentication
    with proc_mesh({"gpus": 1}) as procs:
        counter = procs.spawn("counter", Counter, 41)
        counter.incr.call_one().get(timeout=20)
        ctx = mp.get_context("spawn")
        out = ctx.Queue()
        child = ctx.Process(target=_call_from_child, args=(counter, out))
        child.start()
        try:
            assert out.get(timeout=60) == ("ok", 42)
        finally:
            child.join(30)
            if child.is_alive():
                child.kill()
                child.join(10)
        assert child.exitcode == 0
