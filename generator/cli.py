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

app = typer.Typer(
    add_completion=False,
    help=__doc__,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            print(f"monarch-gen {version('monarch-idl')}")
        except PackageNotFoundError:
            print("monarch-gen (not installed as a distribution)")
        raise typer.Exit(0)


@app.command()
def run(
    schemas: Annotated[
        list[Path],
        typer.Argument(help="Schema files (.capnp).", show_default=False, metavar="SCHEMA..."),
    ],
    outdir: Annotated[
        Path, typer.Option("-o", "--outdir", help="Output directory.", metavar="OUTDIR")
    ] = Path("generated"),
    include: Annotated[
        list[Path] | None,
        typer.Option("-I", "--import-path", help="Directory for /absolute imports.", metavar="DIR"),
    ] = None,
    check_only: Annotated[
        bool,
        typer.Option("--check", help="Write nothing; exit 1 and list stale files if any differ."),
    ] = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Generate OUTDIR/x.py (and the schema copy OUTDIR/x.capnp) for every x.capnp.

    Schema evolution: `monarch-gen compat OLD NEW` (see `monarch-gen compat --help`).
    """
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
        if not stale:
            print(f"{outdir}: up to date ({len(schemas)} schema(s))")
        raise typer.Exit(1 if stale else 0)
    written = write(outputs, outdir)
    for path in written:
        print(f"wrote {path}")
    if not written:
        print(f"{outdir}: up to date ({len(schemas)} schema(s)), nothing written")


compat_app = typer.Typer(
    add_completion=False,
    help="Report the changes between two versions of a schema that break the wire.",
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


@compat_app.command()
def compat(
    schemas: Annotated[
        list[Path],
        typer.Argument(
            help="OLD NEW, or with --against the current schema files.",
            show_default=False,
            metavar="SCHEMA...",
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
        typer.Option("-I", "--import-path", help="Directory for /absolute imports.", metavar="DIR"),
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
