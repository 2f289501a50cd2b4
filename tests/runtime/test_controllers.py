"""``get_or_spawn_controller``: one actor per name in the job, hosted by the root client."""

from __future__ import annotations

import asyncio
import os

import pytest
from monarch.actor import get_or_spawn_controller
from monarch.testing import proc_mesh

from tests.runtime.feature_actors import Registry, RegistryUser

T = 30.0


def test_concurrent_first_calls_spawn_one_controller_in_the_client_process() -> None:
    async def many() -> list[object]:
        return list(await asyncio.gather(*(get_or_spawn_controller("dedup", Registry) for _ in range(8))))

    meshes = asyncio.run(many())
    answers = {m.where.call_one().get(T) for m in meshes}  # type: ignore[attr-defined]
    assert len(answers) == 1
    pid, _ident, constructions = answers.pop()
    assert pid == os.getpid()
    assert constructions == 1


def test_an_actor_in_a_proc_reaches_the_same_controller() -> None:
    reg = get_or_spawn_controller("registry", Registry).get(T)
    reg.put.call_one("a", 41).get(T)
    with proc_mesh({"gpus": 2}) as procs:
        users = procs.spawn("users", RegistryUser)
        assert list(users.lookup.call("a").get(T).values()) == [41, 41]


def test_a_controller_name_must_be_a_string() -> None:
    with pytest.raises(TypeError, match="name must be a str"):
        get_or_spawn_controller(3, Registry)  # type: ignore[arg-type]
