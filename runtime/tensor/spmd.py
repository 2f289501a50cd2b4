"""SPMD over a ProcMesh (Meta Monarch's ``monarch.spmd``): torchrun's environment on every proc,
and ``run_spmd`` to run an unchanged torchrun-style script (``init_process_group`` from env).

``SPMDActor`` derives RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, GROUP_RANK,
GROUP_WORLD_SIZE, ROLE_RANK, ROLE_WORLD_SIZE, ROLE_NAME, MASTER_ADDR and MASTER_PORT from its
point in the mesh: the last dimension is the per-host ("local") one, as in Monarch. Stdlib only
at import (the spawn message is unpickled on the proc's event loop); the script imports torch.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import runpy
import socket
import sys
from typing import Any

from ..actor import Actor, ProcMesh, context, endpoint

__all__ = ["SPMDActor", "run_spmd", "setup_torch_elastic_env", "setup_torch_elastic_env_async"]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class SPMDActor(Actor):
    """Sets torchrun's environment variables on its proc and runs SPMD scripts there."""

    def __init__(self) -> None:
        point = context().actor_instance.rank
        ext = point.extent
        local = ext.labels[-1]
        sizes = dict(zip(ext.labels, ext.sizes))
        self.rank = point.rank
        self.local_rank = point[local]
        self.world_size = math.prod(ext.sizes)
        self.local_world_size = sizes[local]
        self.group_rank = self.rank // self.local_world_size
        self.group_world_size = self.world_size // self.local_world_size

    def _env(self, master_addr: str, master_port: int) -> dict[str, str]:
        return {
            "MASTER_ADDR": master_addr,
            "MASTER_PORT": str(master_port),
            "RANK": str(self.rank),
            "LOCAL_RANK": str(self.local_rank),
            "WORLD_SIZE": str(self.world_size),
            "LOCAL_WORLD_SIZE": str(self.local_world_size),
            "GROUP_RANK": str(self.group_rank),
            "GROUP_WORLD_SIZE": str(self.group_world_size),
            "ROLE_RANK": str(self.rank),
            "ROLE_WORLD_SIZE": str(self.world_size),
            "ROLE_NAME": "rank",
        }

    @endpoint
    def get_host_port(self, use_ipaddr: Any = None) -> tuple[str, int]:
        """An address and a free port on this proc's host for the rendezvous (loopback when
        ``use_ipaddr`` is None and the mesh is on one host; else this host's name)."""
        return ("127.0.0.1" if use_ipaddr is None else socket.gethostname(), _free_port())

    @endpoint
    def setup_env(self, master_addr: str, master_port: int) -> dict[str, str]:
        """Set the torch elastic variables in this proc's environment; returns them."""
        env = self._env(master_addr, master_port)
        os.environ.update(env)
        return env

    @endpoint
    def main(self, master_addr: str, master_port: int, script_args: list[str]) -> str:
        """Set the environment and run ``script_args`` (``["path.py", ...]`` or
        ``["-m", "module", ...]``) as ``__main__``; returns what it printed.

        Raises:
            ValueError: no script or module given.
            RuntimeError: the script raised (the message names the rank).
        """
        os.environ.update(self._env(master_addr, master_port))
        if not script_args or (script_args[0] == "-m" and len(script_args) < 2):
            raise ValueError("no script or module given")
        out = io.StringIO()
        try:
            with contextlib.redirect_stdout(out):
                if script_args[0] == "-m":
                    sys.argv = [script_args[1], *script_args[2:]]
                    runpy.run_module(script_args[1], run_name="__main__", alter_sys=True)
                else:
                    sys.argv = list(script_args)
                    runpy.run_path(script_args[0], run_name="__main__")
        except SystemExit as exc:
            if exc.code not in (None, 0):
                raise RuntimeError(
                    f"rank {self.rank}: the script exited with {exc.code}\n{out.getvalue()}"
                ) from None
        except Exception as exc:
            raise RuntimeError(f"rank {self.rank}: {type(exc).__name__}: {exc}") from exc
        return out.getvalue()


def _spawn(
    procs: ProcMesh, master_addr: str | None, master_port: int | None, use_ipaddr: Any
) -> tuple[Any, str, int]:
    if (master_addr is None) != (master_port is None):
        raise ValueError("give both master_addr and master_port, or neither")
    am: Any = procs.spawn("_SPMDActor", SPMDActor)
    if master_addr is None or master_port is None:
        first = am.slice(**dict.fromkeys(procs.extent.labels, 0))
        master_addr, master_port = first.get_host_port.call_one(use_ipaddr).get()
    return am, master_addr, master_port


def setup_torch_elastic_env(
    procs: ProcMesh,
    master_addr: str | None = None,
    master_port: int | None = None,
    use_ipaddr: Any = None,
) -> None:
    """Set torchrun's environment variables on every proc of ``procs`` (Monarch's function):
    the first proc is the master unless ``master_addr``/``master_port`` are given.

    Raises:
        ValueError: only one of ``master_addr`` and ``master_port`` is given.
    """
    am, addr, port = _spawn(procs, master_addr, master_port, use_ipaddr)
    am.setup_env.call(addr, port).get()


async def setup_torch_elastic_env_async(
    procs: ProcMesh,
    master_addr: str | None = None,
    master_port: int | None = None,
    use_ipaddr: Any = None,
) -> None:
    """``setup_torch_elastic_env`` for async code."""
    if (master_addr is None) != (master_port is None):
        raise ValueError("give both master_addr and master_port, or neither")
    am: Any = procs.spawn("_SPMDActor", SPMDActor)
    if master_addr is None or master_port is None:
        master_addr, master_port = await am.slice(
            **dict.fromkeys(procs.extent.labels, 0)
        ).get_host_port.call_one(use_ipaddr)
    await am.setup_env.call(master_addr, master_port)


def run_spmd(
    procs: ProcMesh, script: str, args: list[str] | None = None, timeout_s: float | None = None
) -> dict[int, str]:
    """Run a torchrun-style script (or ``"-m module"``) on every proc of ``procs``, with the
    torch elastic environment set, and wait for all of them.

    Args:
        procs: the mesh; its last dimension is the per-host one (LOCAL_RANK).
        script: a script path, or ``"-m package.module"``.
        args: the script's arguments.
        timeout_s: how long to wait in seconds (None: forever).

    Returns:
        What each rank printed, by global RANK.

    Raises:
        ActorError: a rank's script raised; its message names the rank.
    """
    am, addr, port = _spawn(procs, None, None, None)
    argv = (script.split(None, 1) if script.startswith("-m ") else [script]) + list(args or [])
    vm = am.main.call(addr, port, argv).get(timeout_s)
    return {pt.rank: out for pt, out in vm.items()}
