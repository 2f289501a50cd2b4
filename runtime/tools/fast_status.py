"""``monarch status`` without typer or rich: the command's fast path, taken by
:func:`monarch.cli.main` before it builds the typer app.

Issue 14 asks for ``monarch status`` in < 200 ms. Building the typer app costs more than that
budget's share here (typer imports rich and pydantic and builds a pydantic ``TypeAdapter`` per
option); this path imports the stdlib, :mod:`monarch.tools.admin_client` and
:mod:`monarch.tools.status_text` only. It accepts exactly the options of the typer command
(``--json``, ``--system``, ``--pid N`` / ``--pid=N``); anything else (``--help``, a typo, an
option of a later version) returns None and the typer command handles it, with its usual
messages. What it prints and its exit status are the typer command's.
"""

from __future__ import annotations

import json
import sys
from typing import IO

__all__ = ["parse_status_args", "run_status"]


def parse_status_args(args: list[str]) -> tuple[int | None, bool, bool] | None:
    """``(pid, as_json, system)`` from the arguments after ``status``, or None when they are
    not all options this path knows (the caller then takes the typer path)."""
    pid: int | None = None
    as_json = system = False
    it = iter(args)
    for arg in it:
        if arg == "--json":
            as_json = True
        elif arg == "--system":
            system = True
        elif arg == "--pid" or arg.startswith("--pid="):
            value = arg[6:] if arg.startswith("--pid=") else next(it, None)
            if value is None or not value.isdigit():
                return None
            pid = int(value)
        else:
            return None
    return pid, as_json, system


def run_status(
    argv: list[str], out: IO[str] | None = None, err: IO[str] | None = None
) -> int | None:
    """Run ``monarch status`` for ``argv`` (the command line after the program name) when this
    path handles it.

    Args:
        argv: e.g. ``["status", "--json"]``.
        out: where the status goes (default ``sys.stdout``).
        err: where errors go (default ``sys.stderr``).

    Returns:
        The exit status (0, or 1 when no client is found or it cannot be reached), or None when
        ``argv`` is not a ``status`` command line this path knows.
    """
    if not argv or argv[0] != "status":
        return None
    parsed = parse_status_args(argv[1:])
    if parsed is None:
        return None
    pid, as_json, system = parsed
    out = out or sys.stdout
    err = err or sys.stderr
    from .admin_client import AdminClient, AdminNotFound, AdminRequestError, find_admin

    try:
        doc = AdminClient(find_admin(pid)).status()
    except (AdminNotFound, AdminRequestError) as exc:
        print(f"monarch: {exc}", file=err)
        return 1
    if as_json:
        out.write(json.dumps(doc, indent=2) + "\n")
    else:
        from .status_text import render_status, use_colour

        out.write(render_status(doc, system=system, colour=use_colour(out)))
    out.flush()
    return 0
