"""``monarch status``, ``monarch exec`` and ``monarch env``: a running client's job, through its
admin endpoint (found as :func:`monarch.tools.admin_client.find_admin` says).

Exit status: 0 on success; 1 when no client is found or it cannot be reached; for ``exec``, 1
when any proc's command failed (non-zero status, error or timeout).
"""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer

__all__ = ["register"]

_PID = typer.Option(
    "--pid", help="The client's pid (default: the newest running client of this user)."
)


def _client(pid: int | None) -> Any:
    from .admin_client import AdminClient, AdminNotFound, find_admin

    try:
        return AdminClient(find_admin(pid))
    except AdminNotFound as exc:
        typer.echo(f"monarch: {exc}", err=True)
        raise typer.Exit(1) from None


def _fail(exc: Exception) -> None:
    typer.echo(f"monarch: {exc}", err=True)
    raise typer.Exit(1) from None


def _console() -> Any:
    from rich.console import Console

    return Console(highlight=False)


def status_command(
    pid: Annotated[int | None, _PID] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the /v1/status document as JSON.")
    ] = False,
    system: Annotated[
        bool, typer.Option("--system", help="Also list the runtime's own (system) actors.")
    ] = False,
) -> None:
    """Hosts, procs, actors and their health in a running client."""
    from .admin_client import AdminRequestError
    from .status_text import render_status, use_colour

    client = _client(pid)
    try:
        doc = client.status()
    except AdminRequestError as exc:
        _fail(exc)
    if as_json:
        typer.echo(json.dumps(doc, indent=2))
        return
    sys.stdout.write(render_status(doc, system=system, colour=use_colour(sys.stdout)))


def exec_command(
    argv: Annotated[
        list[str] | None, typer.Argument(help="The command to run on every proc (after --).")
    ] = None,
    code: Annotated[
        str | None,
        typer.Option("-c", "--code", help="Python source to run inside every proc instead."),
    ] = None,
    timeout_s: Annotated[float, typer.Option("--timeout", help="Per-proc limit, seconds.")] = 30.0,
    pid: Annotated[int | None, _PID] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False,
) -> None:
    """Run a command (``monarch exec -- CMD ARGS``) or a Python snippet (``monarch exec -c 'print(1)'``,
    run inside each proc) on every live proc of a running client; prints each rank's output."""
    from .admin_client import AdminRequestError

    if (code is None) == (not argv):
        typer.echo(
            "monarch exec: give a command after -- or a snippet with -c (not both)", err=True
        )
        raise typer.Exit(2)
    client = _client(pid)
    try:
        results = client.exec(code=code, argv=list(argv) if argv else None, timeout_s=timeout_s)
    except AdminRequestError as exc:
        _fail(exc)
    bad = any(r["error"] or r["returncode"] != 0 for r in results)
    if as_json:
        typer.echo(json.dumps(results, indent=2))
    else:
        from rich.markup import escape

        con = _console()
        for r in results:
            rc = r["returncode"]
            mark = "green" if rc == 0 and not r["error"] else "red"
            con.print(
                f"[bold]── rank {r['rank']}[/] proc {r['proc']} on {r['hostname']} (pid {r['pid']}) [{mark}]exit {rc}[/]"
            )
            if r["stdout"]:
                con.print(escape(r["stdout"].rstrip("\n")))
            if r["stderr"]:
                con.print(f"[red]{escape(r['stderr'].rstrip(chr(10)))}[/]")
            if r["error"]:
                con.print(f"[red]error: {escape(r['error'])}[/]")
        if not results:
            con.print("no live procs")
    if bad:
        raise typer.Exit(1)


def env_command(
    prefix: Annotated[
        str, typer.Option("--prefix", help="Only variables whose name starts with this.")
    ] = "",
    pid: Annotated[int | None, _PID] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False,
) -> None:
    """The environment variables of every live proc of a running client: one column per rank;
    values that differ across ranks are highlighted."""
    from .admin_client import AdminRequestError

    client = _client(pid)
    try:
        results = client.env(prefix)
    except AdminRequestError as exc:
        _fail(exc)
    if as_json:
        typer.echo(json.dumps(results, indent=2))
        return
    from rich.table import Table

    names = sorted({k for r in results for k in (r["env"] or {})})
    t = Table(title=f"environment{f' ({prefix}*)' if prefix else ''} of {len(results)} procs")
    t.add_column("variable", style="bold")
    for r in results:
        t.add_column(f"rank {r['rank']}\n{r['proc']}")
    for n in names:
        vals = [(r["env"] or {}).get(n) for r in results]
        differ = len(set(vals)) > 1
        cells = [
            "[dim]-[/]" if v is None else (f"[bold yellow]{v}[/]" if differ else v) for v in vals
        ]
        t.add_row(f"[yellow]{n}[/]" if differ else n, *cells)
    errors = [r for r in results if r["error"]]
    con = _console()
    con.print(t)
    for r in errors:
        con.print(f"[red]rank {r['rank']} ({r['proc']}): {r['error']}[/]")
    if not names:
        con.print(f"no variables{f' starting with {prefix!r}' if prefix else ''}")


def register(app: typer.Typer) -> None:
    """Add ``monarch status``, ``monarch exec`` and ``monarch env`` to the ``monarch`` CLI."""
    app.command("status")(status_command)
    app.command("exec", context_settings={"allow_interspersed_args": False})(exec_command)
    app.command("env")(env_command)
