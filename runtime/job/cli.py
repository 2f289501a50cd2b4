"""The ``monarch job`` commands: ``apply``, ``status``, ``kill`` and ``k8s-manifest``.

A job spec is given as ``FILE.py:NAME`` or ``MODULE:NAME`` (``NAME`` defaults to ``job``): a
Python file or importable module whose attribute ``NAME`` is a job object (or a function of no
arguments returning one). ``status`` and ``kill`` work on the cached job (``--cache``, default
``.monarch/job_state.pkl``). Exit status: 0 on success, 1 when the job failed or is not
running, 2 on a usage error.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

_CACHE = ".monarch/job_state.pkl"


def load_spec(spec: str) -> Any:
    """The job named by ``FILE.py[:NAME]`` or ``MODULE[:NAME]``.

    Raises:
        ValueError: nothing there, or not a job.
    """
    import importlib
    import os
    import runpy

    from ._trait import JobTrait

    target, _, attr = spec.partition(":")
    attr = attr or "job"
    if target.endswith(".py"):
        if not os.path.isfile(target):
            raise ValueError(f"no such file: {target}")
        namespace = runpy.run_path(target, run_name="__monarch_job__")
    else:
        try:
            namespace = vars(importlib.import_module(target))
        except ImportError as exc:
            raise ValueError(f"cannot import {target!r}: {exc}") from exc
    if attr not in namespace:
        raise ValueError(f"{target} has no attribute {attr!r}")
    obj = namespace[attr]
    if callable(obj) and not isinstance(obj, JobTrait):
        obj = obj()
    if not isinstance(obj, JobTrait):
        raise ValueError(f"{spec} is a {type(obj).__name__}, not a job (JobTrait)")
    return obj


def register(app: typer.Typer) -> None:
    """Add the ``monarch job`` commands to the ``monarch`` CLI."""
    job_app = typer.Typer(
        name="job", help="Jobs: launch host agents on a scheduler and attach.", no_args_is_help=True
    )
    app.add_typer(job_app, name="job")

    def fail(msg: str, code: int = 2) -> None:
        from rich.console import Console

        Console(stderr=True).print(f"[bold red]error:[/] {msg}", markup=True, highlight=False)
        raise typer.Exit(code)

    @job_app.command("apply")
    def apply_command(
        spec: Annotated[
            str,
            typer.Argument(help="FILE.py[:NAME] or MODULE[:NAME] (NAME: a job, default 'job')."),
        ],
        cache: Annotated[str, typer.Option("--cache", help="The job cache file.")] = _CACHE,
    ) -> None:
        """Launch the job (or reuse the cached one when it still fits) and print its agents.

        ProcessJob and SSHJob agents end with the process that applied them: for those this
        command holds them until Ctrl-C (or SIGTERM), then stops them.
        """
        import signal
        import sys

        from ._trait import JobError

        try:
            job = load_spec(spec)
        except (ValueError, TypeError) as exc:
            fail(str(exc))
        try:
            job.apply(cache)
        except JobError as exc:
            fail(str(exc), 1)
        typer.echo(repr(job))
        for mesh, addrs in job._addresses.items():
            typer.echo(f"{mesh}: {' '.join(addrs)}")
        sys.stdout.flush()
        if job.lives_with_client:
            typer.echo("holding the agents until Ctrl-C", err=True)
            signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
            try:
                signal.pause()
            except KeyboardInterrupt:
                pass
            finally:
                job.kill(cache)

    @job_app.command("status")
    def status_command(
        cache: Annotated[str, typer.Option("--cache", help="The job cache file.")] = _CACHE,
    ) -> None:
        """Print the cached job, whether its agents answer, and their addresses."""
        from ._trait import job_load

        try:
            job = job_load(cache)
        except FileNotFoundError:
            fail(f"no job cached at {cache}", 1)
        except (TypeError, ValueError) as exc:
            fail(f"{cache}: {exc}", 1)
        alive = job.alive()
        typer.echo(f"{job!r}\n{'running' if alive else 'NOT running (stale cache)'}")
        for mesh, addrs in job._addresses.items():
            typer.echo(f"{mesh}: {' '.join(addrs)}")
        if not alive:
            raise typer.Exit(1)

    @job_app.command("kill")
    def kill_command(
        cache: Annotated[str, typer.Option("--cache", help="The job cache file.")] = _CACHE,
    ) -> None:
        """Stop the cached job (agents, procs, the scheduler's job) and remove the cache."""
        from ._trait import job_load

        try:
            job = job_load(cache)
        except FileNotFoundError:
            fail(f"no job cached at {cache}", 1)
        job.kill(cache)
        typer.echo(f"killed {job.__class__.__name__}")

    @job_app.command("k8s-manifest")
    def k8s_manifest_command(
        name: Annotated[str, typer.Option("--name", help="The mesh / StatefulSet / Service name.")],
        replicas: Annotated[int, typer.Option("--replicas", help="Number of host-agent pods.")],
        image: Annotated[str, typer.Option("--image", help="A container image with monarch-idl.")],
        namespace: Annotated[str, typer.Option("--namespace")] = "default",
        port: Annotated[int, typer.Option("--port")] = 26600,
        token_secret: Annotated[
            str, typer.Option("--token-secret", help="Secret with key 'token'.")
        ] = "monarch-cluster-token",
        gpus_per_pod: Annotated[int | None, typer.Option("--gpus-per-pod")] = None,
    ) -> None:
        """Print the headless Service + StatefulSet of the agents as JSON (kubectl apply -f - takes it)."""
        import json

        from ._trait import JobError
        from .kubernetes import agent_manifests

        try:
            objs = agent_manifests(name, replicas, image, namespace=namespace, port=port, token_secret=token_secret, gpus_per_pod=gpus_per_pod)  # fmt: skip
        except (ValueError, JobError) as exc:
            fail(str(exc))
        typer.echo(json.dumps({"apiVersion": "v1", "kind": "List", "items": objs}, indent=2))
