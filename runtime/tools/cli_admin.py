"""The ``monarch`` commands of this tool (being built for issue 14; registers nothing yet)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this tool's commands to the ``monarch`` CLI."""
