"""``monarch-gen``: generate typed Python modules from Cap'n Proto schemas.

Usage: ``monarch-gen SCHEMA... [-o OUTDIR] [-I DIR]... [--check]``. Exit status 0 on success,
1 on a schema or generation error (``path:line:col: message`` on stderr) or, with ``--check``,
when a generated file is stale.

``monarch-gen compat OLD NEW`` (or ``compat --against GIT_REV SCHEMA...``) reports the changes
that break the wire; exit 1 when there is one, 2 when a schema does not load.
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


compat_app = typer.Typer(
    add_completion=False,
    help="Report the changes between two versions of a schema that break the wire.",
    pretty_exceptions_enable=False,
)


@compat_app.command()
def compat(
    schemas: Annotated[
        list[Path],
        typer.Argument(
            help="OLD NEW, or with --against the current schema files.", show_default=False
        ),
    ],
    against: Annotated[
        str | None,
        typer.Option(
            "--against", help="Compare each schema with its version at this git revision."
        ),
    ] = None,
    include: Annotated[
        list[Path] | None,
        typer.Option("-I", "--import-path", help="Directory for /absolute imports."),
    ] = None,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Also list the compatible changes.")
    ] = False,
) -> None:
    """Exit 1 and print ``path:line:col: breaking: ...`` for every breaking change."""
    from .compat_run import run_compat

    try:
        lines, breaking = run_compat(
            [p.as_posix() for p in schemas], against, [str(d) for d in include or []], verbose
        )
    except (SchemaError, GenerationError) as exc:
        print(str(exc), file=sys.stderr)
        raise typer.Exit(2) from None
    for line in lines:
        print(line)
    raise typer.Exit(1 if breaking else 0)


def main() -> None:
    """Console-script entry point: ``monarch-gen SCHEMA...`` or ``monarch-gen compat ...``."""
    if len(sys.argv) > 1 and sys.argv[1] == "compat":
        compat_app(sys.argv[2:], prog_name="monarch-gen compat")
    else:
        app()


if __name__ == "__main__":
    main()
