"""``JobTrait``: a job's spec, its launch (``apply``), its host meshes (``state``) and ``kill``.

Semantics follow Monarch's ``monarch.job.JobTrait``: a job object holds a declarative spec (which
meshes, how many hosts each) and, once applied, what it launched. ``state()`` returns a
:class:`JobState` whose attributes are the mesh names, each a ``HostMesh`` attached to that
mesh's host agents. The launched job is cached (cloudpickle) in ``.monarch/job_state.pkl`` so a
later process reuses it when the cached job still fits the spec; unlike Monarch's, a cached job
whose agents are gone (none answers a TCP connect, or its scheduler says it ended) is detected,
removed and relaunched, never trusted.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import socket
import tempfile
import uuid
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any

from monarch._core.errors import MonarchError
from monarch.actor import HostMesh, attach_to_workers

__all__ = [
    "DEFAULT_JOB_PATH",
    "JobError",
    "JobState",
    "JobTrait",
    "client_token",
    "job_load",
    "job_loads",
    "probe_agent",
    "validate_meshes",
]

log = logging.getLogger("monarch.job")

DEFAULT_JOB_PATH = ".monarch/job_state.pkl"
_MESH_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


class JobError(MonarchError):
    """A job could not be launched, reached or stopped (the message says which and why)."""


def validate_meshes(meshes: Mapping[str, int]) -> dict[str, int]:
    """Check a ``{mesh name: host count}`` spec.

    Args:
        meshes: mesh names (Python identifiers not starting with ``_``: they become attributes
            of the state) to positive host counts.

    Returns:
        A copy, in the given order.

    Raises:
        TypeError: not a mapping of str to int.
        ValueError: empty, a bad name or a non-positive count.
    """
    if not isinstance(meshes, Mapping):
        raise TypeError(
            f"meshes must be a dict of mesh name -> host count, got {type(meshes).__name__}"
        )
    if not meshes:
        raise ValueError("meshes is empty: give at least one mesh, e.g. {'hosts': 2}")
    out: dict[str, int] = {}
    for name, count in meshes.items():
        if not isinstance(name, str) or not _MESH_NAME.match(name):
            raise ValueError(
                f"mesh name {name!r} must be an identifier not starting with '_' (it becomes an attribute of the state)"
            )
        if isinstance(count, bool) or not isinstance(count, int):
            raise TypeError(
                f"mesh {name!r}: the host count must be an int, got {type(count).__name__}"
            )
        if count <= 0:
            raise ValueError(f"mesh {name!r}: the host count must be positive, got {count}")
        out[name] = count
    return out


def client_token() -> str:
    """The cluster token this client authenticates with; a fresh one (set in
    ``MONARCH_CLUSTER_TOKEN``) when none is configured, so the agents a job starts accept it.

    Raises:
        ConfigError: a bad setting in the environment.
    """
    from monarch._mesh.host_agent import token_from_config

    tok = token_from_config()
    if tok is None:
        fresh = secrets.token_hex(32)
        _set_env_token(fresh)
        return fresh
    return tok.decode()


def _set_env_token(token: str) -> None:
    os.environ["MONARCH_CLUSTER_TOKEN"] = token
    import sys

    if "monarch.config" in sys.modules:  # its settings were read before: read the environment again
        from monarch import config

        config.configure()


def use_token(token: str) -> None:
    """Make this client authenticate with ``token`` (a cached job's).

    Raises:
        JobError: this client already uses a different cluster token.
    """
    from monarch._mesh.host_agent import token_from_config

    mine = token_from_config()
    if mine is None:
        _set_env_token(token)
    elif mine.decode() != token:
        raise JobError(
            "this job's agents use another cluster token than this client's (MONARCH_CLUSTER_TOKEN / monarch.config): "
            "unset it, or launch the job with the same token"
        )


def probe_agent(addr: str, timeout_s: float = 2.0) -> bool:
    """Whether something accepts TCP connections at an agent's address (``tcp:H:P`` or ``tcp://H:P``).

    Args:
        addr: the agent's address.
        timeout_s: bound on the connect.
    """
    rest = addr.split(":", 1)[1].lstrip("/")
    host, _, port = rest.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            return True
    except (OSError, ValueError):
        return False


class JobState:
    """The host meshes of a running job, one attribute per mesh name (Monarch's ``JobState``).

    Args:
        hosts: mesh name -> its ``HostMesh``.
    """

    def __init__(self, hosts: dict[str, HostMesh]) -> None:
        self._hosts = hosts

    def __getattr__(self, attr: str) -> HostMesh:
        if attr.startswith("_"):
            raise AttributeError(attr)
        try:
            return self._hosts[attr]
        except KeyError:
            raise AttributeError(
                f"{attr!r} is not a mesh of this job; its meshes: {', '.join(sorted(self._hosts))}"
            ) from None

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | set(self._hosts))

    @property
    def meshes(self) -> dict[str, HostMesh]:
        """Mesh name -> ``HostMesh`` (a copy)."""
        return dict(self._hosts)

    def __repr__(self) -> str:
        return f"JobState({', '.join(f'{k}={len(v)} hosts' for k, v in self._hosts.items())})"


class JobTrait(ABC):
    """A job: a spec of named host meshes and, once applied, the agents launched for them.

    Subclasses implement :meth:`_launch` (start agents; fill :attr:`_addresses`),
    :meth:`_alive` (are the launched agents still there), :meth:`_stop` (stop them) and
    :meth:`_spec` (the fields that must match for a cached job to be reused). The base class
    keeps the cache and builds the state. Thread-compatible, not thread-safe.
    """

    #: whether the agents end with the process that applied the job (ProcessJob, SSHJob) or
    #: outlive it (SlurmJob, KubernetesJob); ``monarch job apply`` holds the former until Ctrl-C
    lives_with_client: bool = False

    def __init__(self) -> None:
        self._job_id: str | None = None
        self._token: str | None = None
        #: mesh name -> agent addresses (``tcp://HOST:PORT``), in rank order, once launched
        self._addresses: dict[str, list[str]] = {}
        self._meshes_attached: dict[str, HostMesh] = {}

    # -- the subclass's part ----------------------------------------------------------------------
    @abstractmethod
    def _spec(self) -> dict[str, Any]:
        """The spec: a cached job is reused only when its ``_spec()`` equals this job's."""

    @abstractmethod
    def _launch(self) -> None:
        """Start the agents and set :attr:`_addresses` (mesh -> addresses); clean up on failure."""

    @abstractmethod
    def _alive(self) -> bool:
        """Whether what :meth:`_launch` started is still there (any process, cheap checks)."""

    @abstractmethod
    def _stop(self) -> None:
        """Stop everything :meth:`_launch` started (any process; best effort, bounded)."""

    # -- public API -------------------------------------------------------------------------------
    @property
    def active(self) -> bool:
        """Whether this object holds a launched job (it may have died since: see :meth:`alive`)."""
        return self._job_id is not None

    @property
    def job_id(self) -> str | None:
        """A UUID of the current launch (Monarch's ``apply_id``); None before :meth:`apply`."""
        return self._job_id

    def alive(self) -> bool:
        """Whether the launched job is still up: its scheduler's check and every agent answering a TCP connect."""
        if self._job_id is None:
            return False
        try:
            if not self._alive():
                return False
        except JobError:
            return False
        return all(probe_agent(a) for addrs in self._addresses.values() for a in addrs)

    def apply(self, cached_path: str | None = DEFAULT_JOB_PATH) -> None:
        """Launch the job, unless it is already running: in this object, or in the cache at
        ``cached_path`` with the same spec and its agents still up (then this object adopts it).

        A cached job that does not fit the spec, or whose agents are gone, is stopped (best
        effort) and its cache file removed; the new launch is written there.

        Args:
            cached_path: the cache file (cloudpickle); None: no cache.

        Raises:
            JobError: the launch failed (the scheduler's message, or what did not come up).
        """
        if self._job_id is not None and self.alive():
            return
        if self._job_id is not None:
            log.info("job %s: its agents are gone, relaunching", self._job_id)
            self._stop_quietly()
        if cached_path is not None and self._adopt_cached(cached_path):
            return
        self._token = client_token()
        self._job_id = str(uuid.uuid4())
        try:
            self._launch()
        except BaseException:
            self._stop_quietly()
            self._job_id = None
            raise
        if cached_path is not None:
            self.dump(cached_path)

    def state(self, cached_path: str | None = DEFAULT_JOB_PATH) -> JobState:
        """The job's host meshes, launching it first if needed (as :meth:`apply`).

        Args:
            cached_path: the cache file; None: no cache.

        Returns:
            A :class:`JobState`: ``state.<mesh name>`` is a ``HostMesh`` of that mesh's agents,
            extent ``{"hosts": N}``, attached (``await mesh.initialized`` waits for all agents).

        Raises:
            JobError: the launch failed, or this client's cluster token differs from the job's.
        """
        self.apply(cached_path)
        assert self._token is not None
        use_token(self._token)
        for name, addrs in self._addresses.items():
            if name not in self._meshes_attached:
                self._meshes_attached[name] = attach_to_workers(
                    workers=list(addrs), ca="trust_all_connections", name=name
                )
        return JobState(dict(self._meshes_attached))

    def kill(self, cached_path: str | None = DEFAULT_JOB_PATH) -> None:
        """Stop everything this job launched (its agents, their procs, the scheduler's job) and
        remove its cache file if that holds this job. A job that is not running: no-op.

        Args:
            cached_path: the cache file to remove when it holds this job; None: leave it.
        """
        if self._job_id is None and cached_path is not None:
            self._adopt_cached(cached_path, check_alive=False)
        if self._job_id is None:
            return
        for hm in self._meshes_attached.values():
            with contextlib.suppress(Exception):
                hm.shutdown().get(10.0)
        self._meshes_attached.clear()
        job_id = self._job_id
        self._stop_quietly()
        self._job_id = None
        self._addresses = {}
        if cached_path is not None:
            with contextlib.suppress(Exception):
                if job_load(cached_path)._job_id == job_id:
                    os.remove(cached_path)

    def dump(self, path: str) -> None:
        """Write this job to ``path`` (cloudpickle, mode 0600: it holds the cluster token)."""
        data = self.dumps()
        parent = os.path.dirname(os.path.abspath(path))
        os.makedirs(parent, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".job_state.", dir=parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.remove(tmp)
            raise

    def dumps(self) -> bytes:
        """This job as bytes (cloudpickle)."""
        import cloudpickle

        return bytes(cloudpickle.dumps(self))

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_meshes_attached"] = {}  # HostMeshes belong to this process's runtime
        for key in self._process_local():
            state[key] = None
        return state

    def _process_local(self) -> tuple[str, ...]:
        """Attributes that do not travel in the cache (Popen objects, pipes)."""
        return ()

    def __repr__(self) -> str:
        meshes = ", ".join(f"{k}={len(v)}" for k, v in self._addresses.items()) or "not launched"
        return f"<{type(self).__name__} {self._spec_text()} job_id={self._job_id} meshes: {meshes}>"

    def _spec_text(self) -> str:
        return " ".join(f"{k}={v!r}" for k, v in self._spec().items() if k != "kind")

    # -- internals --------------------------------------------------------------------------------
    def _stop_quietly(self) -> None:
        try:
            self._stop()
        except Exception as exc:  # stopping is best effort: report and go on
            log.warning("job %s: stopping failed: %s", self._job_id, exc)

    def _adopt_cached(self, path: str, check_alive: bool = True) -> bool:
        try:
            cached = job_load(path)
        except FileNotFoundError:
            return False
        except Exception as exc:  # an unreadable cache is stale, not fatal
            log.warning("ignoring the unreadable job cache %s: %s", path, exc)
            with contextlib.suppress(OSError):
                os.remove(path)
            return False
        fits = type(cached) is type(self) and cached._spec() == self._spec()
        if fits and (not check_alive or cached.alive()):
            for k, v in cached.__dict__.items():
                if k not in ("_meshes_attached",):
                    setattr(self, k, v)
            return True
        if not check_alive:
            return False
        log.info(
            "job cache %s is %s: stopping it and relaunching",
            path,
            "stale" if fits else "for another spec",
        )
        cached._stop_quietly()
        with contextlib.suppress(OSError):
            os.remove(path)
        return False


def job_loads(data: bytes) -> JobTrait:
    """A job from :meth:`JobTrait.dumps` bytes.

    Raises:
        TypeError: the bytes hold something else.
    """
    import cloudpickle

    job = cloudpickle.loads(data)
    if not isinstance(job, JobTrait):
        raise TypeError(f"not a job: {type(job).__name__}")
    return job


def job_load(path: str = DEFAULT_JOB_PATH) -> JobTrait:
    """A job from a file written by :meth:`JobTrait.dump`.

    Raises:
        FileNotFoundError: no such file.
        TypeError: the file holds something else.
    """
    with open(path, "rb") as f:
        return job_loads(f.read())
