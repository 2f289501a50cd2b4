"""Fixtures shared by the runtime tests."""

from tests.runtime.failure_log import failures  # noqa: F401  # the fixture, for every test here
