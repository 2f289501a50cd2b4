"""The ``monarch job`` commands (being built for issue 12 section 5; registers nothing yet)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the ``monarch job`` commands to the ``monarch`` CLI."""
