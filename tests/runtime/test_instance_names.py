"""Monarch's instance names: ``creator`` chains and ``str(Instance)`` through the spawning actors,
the client as ``root``, and the actor log prefix in the client (switchable at run time)."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import monarch.config
import pytest
from monarch.actor import context
from monarch.testing import proc_mesh

from tests.runtime.naming_actors import Parent


def test_an_actor_spawned_by_an_actor_names_its_creators_up_to_the_client() -> None:
    with proc_mesh({"gpus": 2}) as procs:
        parent = procs.spawn("parent", Parent)
        name, creator = parent.slice(gpus=1).spawn_child.call_one().get(timeout=60)
    assert name == (
        "<root>.<tests.runtime.naming_actors.Parent parent{'gpus': 1/2}>.<tests.runtime.naming_actors.Child child>"
    )
    assert (creator.name, creator.class_name) == ("parent", "tests.runtime.naming_actors.Parent")
    assert (creator.creator.name, creator.creator.class_name, creator.creator.creator) == ("root", None, None)
    assert context().actor_instance.name == "root" and str(context().actor_instance) == "<root>"


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("test-instance-names")
    logger.addHandler(handler)
    try:
        yield out
    finally:
        logger.removeHandler(handler)
        monarch.config.clear_runtime_config()


def test_client_log_records_carry_the_root_prefix_until_it_is_switched_off(captured: io.StringIO) -> None:
    with proc_mesh({"gpus": 1}):  # the client runtime is up: it installed the prefix
        logger = logging.getLogger("test-instance-names")
        logger.error("first")
        monarch.config.prefix_python_logs_with_actor = False  # Monarch's module attribute
        assert monarch.config.get_global_config().prefix_python_logs_with_actor is False
        logger.error("second")
        monarch.config.prefix_python_logs_with_actor = True
        logger.error("third")
    assert captured.getvalue().splitlines() == ["[actor=<root>] first", "second", "[actor=<root>] third"]


def test_assigning_a_bad_value_to_a_setting_attribute_raises_and_changes_nothing() -> None:
    with pytest.raises(TypeError):
        monarch.config.peer_timeout_s = "soon"  # type: ignore[attr-defined]  # a setting read as an attribute
    assert monarch.config.get_global_config().peer_timeout_s == 3.0
