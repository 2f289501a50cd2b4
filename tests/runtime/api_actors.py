"""Actor classes for tests/runtime/test_monarch_api.py (importable, so procs unpickle them by reference)."""

from __future__ import annotations

import logging
import os
from typing import Any

from monarch.actor import Actor, context, current_actor_name, endpoint


class Introspect(Actor):
    @endpoint
    def whoami(self) -> tuple[str, str]:
        return current_actor_name(), context().actor_instance.actor_id

    @endpoint
    def logger_info(self) -> tuple[str, int, bool]:
        first = self.logger
        return first.name, first.level, first is self.logger

    @endpoint
    def getpid(self) -> int:
        return os.getpid()


class SelfEnding(Actor):
    """Ends itself with Instance.abort / kill / stop from inside an endpoint."""

    def __init__(self) -> None:
        self.calls = 0

    @endpoint
    def do_abort(self, reason: str | None = None) -> str:
        context().actor_instance.abort(reason)
        return "handler ran to its end"

    @endpoint
    def do_kill(self, reason: str | None = None) -> None:
        context().actor_instance.kill(reason)

    @endpoint
    def do_stop(self, marker: str) -> None:
        self.marker = marker
        context().actor_instance.stop("work done")

    @endpoint
    def ping(self) -> int:
        self.calls += 1
        return self.calls

    def __cleanup__(self, exc: BaseException | None) -> Any:
        marker = getattr(self, "marker", None)
        if marker is not None:
            with open(marker, "w") as f:
                f.write("clean" if exc is None else f"failed: {exc}")
        return None


class Reassigns(Actor):
    def __init__(self) -> None:
        self.logger = logging.getLogger("reassigned")

    @endpoint
    def logger_name(self) -> str:
        return self.logger.name


class Marked(Actor):
    """Reports the marker a wrapper interpreter sets, here and in a proc it spawns itself."""

    @endpoint
    def marker(self) -> str:
        return os.environ.get("WRAPPED_BY_TEST", "")

    @endpoint
    def nested_marker(self) -> str:
        from monarch.actor import this_host

        procs = this_host().spawn_procs({"gpus": 1})
        try:
            return procs.spawn("inner", Marked).marker.call_one().get(60)  # type: ignore[no-any-return]
        finally:
            procs.stop().get(30)


class LogsInside(Actor):
    """Logs from inside its endpoint to a logger whose handler keeps the bare message."""

    @endpoint
    def log_and_name(self) -> tuple[str, str]:
        import io
        import logging

        stream = io.StringIO()
        handler = logging.StreamHandler(stream)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger = logging.getLogger("monarch-test-capture")
        logger.addHandler(handler)
        try:
            logger.error("inside")
        finally:
            logger.removeHandler(handler)
        return stream.getvalue(), str(context().actor_instance)
