"""``monarch``: the command line of monarch-idl.

Commands::

    monarch --version            the installed monarch-idl version
    monarch config               the effective settings (overrides, environment, defaults)
    monarch config --json        the same as one JSON object, for scripts
    monarch config --markdown    the reference table of every setting (docs/configuration.md)
    monarch host serve --listen tcp://HOST:PORT [--advertise HOST] [--insecure]
                       [--tls-ca CA.pem --tls-cert CERT.pem [--tls-key KEY.pem]]
                                 serve this machine as a host agent (clients attach_to_workers)

The root :data:`app` is a typer app, built on first use (``monarch.cli.app``, or :func:`main`);
a group of commands is a typer sub-app added with ``app.add_typer(group, name="host")`` in
:func:`_build_app`, one sub-app per concern. Importing this module imports neither typer nor
rich: ``monarch status`` is served by :mod:`monarch.tools.fast_status` without them (issue 14:
< 200 ms) and every other command line builds the app. Exit status: 0 on success, 2 on a usage
error or a bad setting in the environment (message on stderr).
"""

from __future__ import annotations

import enum
import json
import sys
from typing import TYPE_CHECKING, Annotated, Any

if TYPE_CHECKING:
    import typer

    #: the typer app of every command; built on first access (module ``__getattr__``)
    app: typer.Typer

__all__ = ["DISTRIBUTION", "app", "main"]

DISTRIBUTION = "monarch-idl"

_app: typer.Typer | None = None


def __getattr__(name: str) -> Any:
    if name == "app":
        return _build_app()
    raise AttributeError(f"module 'monarch.cli' has no attribute {name!r}")


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"{DISTRIBUTION} {_version()}")
        raise typer.Exit()


def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            help="Print the installed monarch-idl version and exit.",
            metavar="",
            callback=_print_version,
            is_eager=True,
        ),
    ] = False,
) -> None:
    """monarch-idl: a typed distributed actor framework for PyTorch."""


def _cfg() -> Any:
    # monarch.config (pydantic, ~0.1 s) is imported by the commands that read settings only, so
    # ``monarch status`` and the other tools' commands start without it
    import monarch.config

    return monarch.config


def _source(name: str) -> str:
    if name in _cfg().get_runtime_config():
        return "configure()"
    if _cfg()._environ_value(name):
        return "environment"
    return "default"


def _shown(value: Any) -> Any:
    from pydantic import SecretStr

    if isinstance(value, SecretStr):
        return "<hidden>"
    if isinstance(value, enum.Enum):  # Monarch's Encoding: shown as its environment spelling
        return value.value
    return value


def config_command(
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON object {setting: value}.")
    ] = False,
    markdown: Annotated[
        bool,
        typer.Option(
            "--markdown", help="Print the reference table of every setting (Markdown) and exit."
        ),
    ] = False,
) -> None:
    """Show the effective configuration: each setting, its value and where it came from.

    The cluster token is shown as <hidden> when set.
    """
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    if markdown:
        typer.echo(_cfg()._settings_markdown(), nl=False)
        return
    try:
        cfg = _cfg().get_global_config()
    except _cfg().ConfigError as exc:
        Console(stderr=True).print(f"[bold red]error:[/] {exc}", markup=True, highlight=False)
        raise typer.Exit(2) from None
    names = list(_cfg().MonarchConfig.model_fields)
    if as_json:
        typer.echo(json.dumps({n: _shown(getattr(cfg, n)) for n in names}, indent=2))
        return
    table = Table(title="monarch configuration", title_justify="left")
    table.add_column("Setting", style="bold")
    table.add_column("Environment variable", style="cyan", no_wrap=True)
    table.add_column("Value", overflow="fold")
    table.add_column("Source", style="dim")
    for n in names:
        value = _shown(getattr(cfg, n))
        text = "unset" if value is None else '""' if value == "" else str(value)
        shown = Text(text)  # Text: a value is never read as rich markup
        table.add_row(n, _cfg().env_var(n), shown, _source(n))
    Console().print(table)


def host_serve_command(
    listen: Annotated[str, typer.Option("--listen", help="Where clients connect: tcp://HOST:PORT (port 0 picks one).")],
    advertise: Annotated[
        str | None,
        typer.Option("--advertise", help="The host (or tcp://HOST) procs bind to and other machines reach."),
    ] = None,
    insecure: Annotated[
        bool, typer.Option("--insecure", help="Serve with no cluster token: ANY client that can connect may start processes.")
    ] = False,
    log_level: Annotated[str, typer.Option("--log-level", help="Logging level of the agent.")] = "INFO",
    tls_ca: Annotated[
        str | None,
        typer.Option("--tls-ca", help="Mutual TLS: the CA bundle (PEM) clients' certificates must be signed by. Default: tls_ca."),
    ] = None,
    tls_cert: Annotated[
        str | None,
        typer.Option("--tls-cert", help="Mutual TLS: this host's certificate chain (PEM; may hold the key). Default: tls_cert."),
    ] = None,
    tls_key: Annotated[
        str | None,
        typer.Option("--tls-key", help="Mutual TLS: this host's private key (PEM) when --tls-cert does not hold it."),
    ] = None,
) -> None:
    """Serve this machine as a host agent until killed.

    Clients authenticate with the cluster token (MONARCH_CLUSTER_TOKEN or monarch.config) and/or
    mutual TLS (--tls-ca/--tls-cert/--tls-key; without them the tls_ca/tls_cert/tls_key settings,
    MONARCH_TLS_CA/_CERT/_KEY); procs started here present the same certificate. The agent starts
    procs for each client and kills them when it disconnects. The bound address is printed as the
    first line of stdout: "monarch host agent listening on tcp:HOST:PORT".
    """
    import asyncio
    import logging

    from rich.console import Console

    from ._mesh.host_agent import HostAgent, InsecureAgentError, tls_from_options, token_from_config

    logging.basicConfig(level=log_level.upper(), format="[monarch host %(levelname)s] %(message)s")
    try:
        token = token_from_config()
        tls = tls_from_options(tls_ca, tls_cert, tls_key)
        agent = HostAgent(listen, advertise=advertise, token=token, insecure=insecure, tls=tls)
    except (InsecureAgentError, ValueError, _cfg().ConfigError) as exc:
        Console(stderr=True).print(f"[bold red]error:[/] {exc}", markup=True, highlight=False)
        raise typer.Exit(2) from None

    def ready(addr: str) -> None:
        typer.echo(f"monarch host agent listening on {addr}")
        import sys

        sys.stdout.flush()

    try:
        asyncio.run(agent.serve(on_ready=ready))
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        Console(stderr=True).print(f"[bold red]error:[/] cannot serve on {listen}: {exc}", markup=True, highlight=False)
        raise typer.Exit(1) from None


def _build_app() -> typer.Typer:
    """The typer app of every command (built once)."""
    global _app, typer
    if _app is not None:
        return _app
    import typer  # a module global: typer resolves the commands' string annotations here

    from .job import cli as cli_job
    from .tools import cli_admin, cli_debug, cli_sync, cli_top

    app = typer.Typer(
        name="monarch",
        help="monarch-idl: a typed distributed actor framework for PyTorch.",
        add_completion=True,  # --install-completion / --show-completion (bash, zsh, fish)
        no_args_is_help=True,
        rich_markup_mode="rich",
        pretty_exceptions_enable=False,
    )
    app.callback()(_root)
    app.command("config")(config_command)
    host_app = typer.Typer(
        name="host", help="Host agents: serve this machine to clients.", no_args_is_help=True
    )
    app.add_typer(host_app, name="host")
    host_app.command("serve")(host_serve_command)
    # the tools' commands: one module each in monarch.tools, registered here (each module
    # imports only typer at import time)
    for tool in (cli_admin, cli_debug, cli_job, cli_sync, cli_top):
        tool.register(app)
    _app = app
    return app


def main() -> None:
    """Entry point of the ``monarch`` console script."""
    from .tools.fast_status import run_status

    code = run_status(sys.argv[1:])
    if code is not None:
        raise SystemExit(code)
    _build_app()()


if __name__ == "__main__":
    main()
