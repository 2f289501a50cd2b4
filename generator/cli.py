"""``monarch-gen``: generate typed Python modules from Cap'n Proto schemas.

Usage: ``monarch-gen SCHEMA... [-o OUTDIR] [-I DIR]... [--check]``. Exit status 0 on success,
1 on a schema or generation error (``path:line:col: message`` on stderr) or, with ``--check``,
when a generated file is stale.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from monarch._core.errors import GenerationError, SchemaError

from .generate import check, generate, write

__all__ = ["app", "main"]

app = typer.Typer(add_completion=False, help=__doc__, pretty_exceptions_enable=False)


@app.command()
def run(
    schemas: Annotated[
        list[Path], typer.Argument(help="Schema files (.capnp).", show_default=False)
    ],
    outdir: Annotated[Path, typer.Option("-o", "--outdir", help="Output directory.")] = Path(
        "generated"
    ),
    include: Annotated[
        list[Path] | None,
        typer.Option("-I", "--import-path", help="Directory for /absolute imports."),
    ] = None,
    check_only: Annotated[
        bool,
        typer.Option("--check", help="Write nothing; exit 1 and list stale files if any differ."),
    ] = False,
) -> None:
    """Generate OUTDIR/x.py (and the schema copy OUTDIR/x.capnp) for every x.capnp."""
    paths = [p.as_posix() for p in schemas]
    dirs = [str(d) for d in include or []]
    try:
        outputs = generate(paths, dirs)
    except (SchemaError, GenerationError) as exc:
        print(str(exc), file=sys.stderr)
        raise typer.Exit(1) from None
    if check_only:
        stale = check(outputs, outdir)
        for s in stale:
            print(f"stale: {s}", file=sys.stderr)
        raise typer.Exit(1 if stale else 0)
    for path in write(outputs, outdir):
        print(f"wrote {path}")


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
