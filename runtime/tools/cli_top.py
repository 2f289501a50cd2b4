"""``monarch top`` and ``monarch dashboard``: watching a running client's mesh, through its admin
endpoint (found as :func:`monarch.tools.admin_client.find_admin` says).

``monarch top`` is a textual terminal app (:mod:`monarch.tools.top`); ``monarch dashboard``
prints the URL of the web page the client's admin endpoint serves (``/dashboard?token=...``) and
opens it in a browser only with ``--open``.

Exit status: 0 on success; 1 when no client is found or it cannot be reached; 2 on a bad option.
"""

from __future__ import annotations

import urllib.parse
from typing import Annotated, Any

import typer

__all__ = ["dashboard_url", "register"]

_PID = typer.Option(
    "--pid", help="The client's pid (default: the newest running client of this user)."
)


def _info(pid: int | None) -> Any:
    from .admin_client import AdminNotFound, find_admin

    try:
        return find_admin(pid)
    except AdminNotFound as exc:
        typer.echo(f"monarch: {exc}", err=True)
        raise typer.Exit(1) from None


def dashboard_url(url: str, token: str) -> str:
    """The dashboard page of an admin endpoint, with its token as the ``?token=`` query.

    Args:
        url: the endpoint's base URL (``http://127.0.0.1:PORT``, from ``admin.json``).
        token: its token (from ``admin.json``).
    """
    return f"{url.rstrip('/')}/dashboard?{urllib.parse.urlencode({'token': token})}"


def top_command(
    pid: Annotated[int | None, _PID] = None,
    interval_s: Annotated[
        float,
        typer.Option("--interval-s", min=0.05, help="Seconds between two refreshes."),
    ] = 1.0,
) -> None:
    """A live terminal view of hosts -> procs -> actors (q quits, r refreshes, p py-spy stack)."""
    from .admin_client import AdminClient, AdminRequestError
    from .top import run_top

    info = _info(pid)
    client = AdminClient(info, timeout_s=10.0)
    try:
        client.request("GET", "/v1/ping", timeout_s=5.0)
    except AdminRequestError as exc:
        typer.echo(f"monarch: {exc}", err=True)
        raise typer.Exit(1) from None
    run_top(
        client, interval_s=interval_s, title=f"monarch top: client pid {info.pid} at {info.url}"
    )


def dashboard_command(
    pid: Annotated[int | None, _PID] = None,
    open_browser: Annotated[
        bool,
        typer.Option("--open/--no-open", help="Also open the page in the default web browser."),
    ] = False,
) -> None:
    """Print the URL of the running client's web dashboard (its token included)."""
    info = _info(pid)
    url = dashboard_url(info.url, info.token)
    typer.echo(url)
    if open_browser:
        import webbrowser

        if not webbrowser.open(url):
            typer.echo("monarch: no web browser could be started; open the URL above", err=True)
            raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add ``monarch top`` and ``monarch dashboard`` to the ``monarch`` CLI."""
    app.command("top")(top_command)
    app.command("dashboard")(dashboard_command)
