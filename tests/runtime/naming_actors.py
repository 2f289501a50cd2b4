"""Actors for tests/runtime/test_instance_names.py (importable by procs)."""

from __future__ import annotations

from typing import Any

from monarch.actor import Actor, context, endpoint


class Child(Actor):
    @endpoint
    def who(self) -> tuple[str, Any]:
        inst = context().actor_instance
        return str(inst), inst.creator


class Parent(Actor):
    @endpoint
    def spawn_child(self) -> tuple[str, Any]:
        child = context().actor_instance.proc.spawn("child", Child)
        return child.who.call_one().get(timeout=30)
