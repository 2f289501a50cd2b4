"""The ``monarch`` commands of code sync: none.

Code sync runs inside the client that holds the mesh (``await procs.sync_workspace(...)``, with
``watch=True`` for sync on save; see :mod:`monarch.tools.code_sync`); a separate ``monarch sync``
process would need to reach a running client's meshes through its admin endpoint, which does not
offer code sync, so no command is registered.
"""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this tool's commands to the ``monarch`` CLI (none; see the module docstring)."""
