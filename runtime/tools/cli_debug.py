"""``monarch debug [--host H] [--port P]``: connect to a running client's debug server.

Defaults come from ``MONARCH_DEBUG_SERVER_HOST`` / ``MONARCH_DEBUG_SERVER_PORT`` (else
``localhost:27000``), as in Monarch. Logs in with the server's secret file (same user, same
machine) or ``MONARCH_CLUSTER_TOKEN``. Exit status: 0 after ``quit`` or end of input, 1 when no
server answers or the login fails.
"""

from __future__ import annotations

import os
import socket
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table


def _secret(port: int) -> bytes | None:
    from . import debug_server, debug_wire

    try:
        with open(debug_server.secret_path(port), "rb") as f:
            return f.read().strip()
    except OSError:
        return debug_wire.cluster_token()


def debug(
    host: Annotated[
        str | None,
        typer.Option(help="debug server host (default $MONARCH_DEBUG_SERVER_HOST or localhost)"),
    ] = None,
    port: Annotated[
        int | None,
        typer.Option(help="debug server port (default $MONARCH_DEBUG_SERVER_PORT or 27000)"),
    ] = None,
) -> None:
    """Attach to the paused ranks of a running job: list, attach, cast, continue."""
    from . import debug_server, debug_wire

    host = host or os.environ.get(debug_server.ENV_HOST, debug_server.DEFAULT_HOST)
    if port is None:
        try:
            port = int(os.environ.get(debug_server.ENV_PORT, str(debug_server.DEFAULT_PORT)))
        except ValueError:
            raise typer.BadParameter(f"{debug_server.ENV_PORT} is not a port number") from None
    console = Console(highlight=False)
    err = Console(stderr=True)
    secret = _secret(port)
    if secret is None:
        err.print(
            f"monarch debug: no secret for port {port} ({debug_server.secret_path(port)}) and no MONARCH_CLUSTER_TOKEN"
        )
        raise typer.Exit(1)
    try:
        sock = socket.create_connection((host, port), timeout=10)
        debug_wire.login(sock, secret, "cli")
    except (OSError, debug_wire.DebugWireError) as exc:
        err.print(f"monarch debug: no debug server at {host}:{port} ({exc}); is a rank paused?")
        raise typer.Exit(1) from None
    try:
        while True:
            msg = debug_wire.recv(sock)
            t = msg.get("t")
            if t == "out":
                console.out(str(msg.get("s", "")), end="")
            elif t == "table":
                table = Table("Actor", "Rank", "Coords", "Host", "Function", "File:Line")
                for row in msg.get("rows", []):
                    table.add_row(*[str(c) for c in row])
                console.print(table)
            elif t == "prompt":
                try:
                    line = input(str(msg.get("s", "")))
                except EOFError:
                    line = "quit"
                debug_wire.send(sock, {"t": "line", "s": line})
                if line.strip() in ("q", "quit") and msg.get("s") == debug_server.PROMPT:
                    return
    except (ConnectionError, debug_wire.DebugWireError):
        err.print("monarch debug: the debug server closed the connection (the client ended?)")
    finally:
        sock.close()


def register(app: typer.Typer) -> None:
    """Add ``monarch debug`` to the ``monarch`` CLI."""
    app.command("debug")(debug)
