"""Old and new versions of ``compat/store_v*.capnp`` on the wire (see test_compat_wire.py).

Each version is generated into its own package (``compat_v1``, ``compat_v2``) under a fixed
folder; a process may load only one of them (both declare the same file id). Run as a script,
this is the *client* of one direction: ``python -m tests.generator.compat_wire CLIENT SERVER``
spawns a proc whose :class:`Launcher` starts a store of version SERVER there, and calls it
through the generated stubs of version CLIENT.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

_HERE = Path(__file__).resolve().parent
_ROOT = _HERE.parents[1]


def ensure_packages() -> Path:
    """The folder holding ``compat_v1`` and ``compat_v2`` (made when missing), on sys.path."""
    h = hashlib.sha256()
    for p in [
        *sorted((_HERE / "compat").glob("*.capnp")),
        *sorted((_ROOT / "templates").glob("*")),
    ]:
        h.update(p.read_bytes())
    for p in sorted((_ROOT / "generator").glob("*.py")):
        h.update(p.read_bytes())
    root = Path(tempfile.gettempdir()) / f"monarch-compat-{os.getuid()}-{h.hexdigest()[:16]}"
    if not root.exists():
        from monarch.generator.generate import generate, write

        tmp = Path(tempfile.mkdtemp(prefix=root.name + ".", dir=root.parent))
        old = Path.cwd()
        os.chdir(_HERE / "compat")
        try:
            for v in ("1", "2"):
                write(generate([f"store_v{v}.capnp"], []), tmp / f"compat_v{v}")
        finally:
            os.chdir(old)
        try:
            os.rename(tmp, root)
        except OSError:  # made by another process meanwhile: identical
            pass
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    return root


def store_module(version: str) -> Any:
    ensure_packages()
    return importlib.import_module(f"compat_v{version}.store_v{version}")


def make_store(version: str) -> type:
    """The implementation of ``Store`` of one version (keeps jobs in memory)."""
    m = store_module(version)

    class MemoryStore(m.Store):  # type: ignore[misc, name-defined]  # a generated base of either version
        def __init__(self) -> None:
            self.jobs: dict[int, Any] = {}

        def put(self, job: Any) -> bool:
            self.jobs[job.id_] = m.Job.from_bytes(job.to_bytes())  # keep a copy past the message
            return True

        def get(self, key: int) -> Any:
            return self.jobs[key]

        def count(self) -> int:
            return len(self.jobs)

        def drop(self, id_: int) -> None:
            self.jobs.pop(id_, None)

    MemoryStore.__module__ = __name__
    MemoryStore.__qualname__ = MemoryStore.__name__ = f"MemoryStoreV{version}"
    return MemoryStore


def make_relay(version: str) -> type:
    """The implementation of ``Relay`` of one version: sends the received job on, never
    rebuilding it (a v1 relay of a v2 job holds a union member and fields it does not know)."""
    m = store_module(version)

    class PassingRelay(m.Relay):  # type: ignore[misc, name-defined]  # a generated base of either version
        def echo(self, job: Any) -> Any:
            return job

        def relay(self, job: Any, to: Any) -> Any:
            return to.echo.call_one(job).get(timeout=60)

    PassingRelay.__module__ = __name__
    PassingRelay.__qualname__ = PassingRelay.__name__ = f"PassingRelayV{version}"
    return PassingRelay


def __getattr__(name: str) -> Any:
    # spawned procs unpickle the store class by name: make it on first use, in that proc only
    if name in ("MemoryStoreV1", "MemoryStoreV2"):
        cls = make_store(name[-1])
        globals()[name] = cls
        return cls
    if name in ("PassingRelayV1", "PassingRelayV2"):
        cls = make_relay(name[-1])
        globals()[name] = cls
        return cls
    raise AttributeError(name)


def _launcher_cls() -> type:
    from dataclasses import replace

    from monarch.actor import Actor, endpoint, this_proc

    class StoreLauncher(Actor):
        """Starts a store of one version in its own proc and hands out a reference to it."""

        @endpoint
        def start(self, version: str, kind: str = "MemoryStore", name: str = "store") -> bytes:
            from monarch._mesh.actor_mesh import encode_mesh_ref

            mesh = this_proc().spawn(name, __getattr__(f"{kind}V{version}"))
            # encode_mesh_ref pickles the implementation class into the reference, which would
            # make the client import this version's module: hand out the class-free reference
            anonymous = type(mesh)(replace(mesh._ref, actor_cls=None), mesh._shape)
            return encode_mesh_ref(anonymous)

    StoreLauncher.__module__ = __name__
    return StoreLauncher


StoreLauncher = _launcher_cls()


def client(client_version: str, server_version: str) -> None:
    """Call a store of ``server_version`` through the stubs of ``client_version``; raise on any
    wrong answer."""
    from monarch._mesh.actor_mesh import decode_mesh_ref
    from monarch.testing import proc_mesh

    with proc_mesh({"gpus": 1}) as procs:
        launcher = procs.spawn("launcher", StoreLauncher)
        ref = launcher.start.call_one(server_version).get(timeout=60)
        relay_refs = [
            launcher.start.call_one(server_version, "PassingRelay", f"relay{i}").get(timeout=60)
            for i in range(2)
        ]
        # only now: procs fork from this process's zygote, which must not hold the other version
        m = store_module(client_version)
        store = decode_mesh_ref(ref, m.StoreMesh)
        relays = [decode_mesh_ref(r, m.RelayMesh) for r in relay_refs]
        safe = m.Mode(1)  # "safe" in v1, "careful" in v2: the wire carries the number
        item = m.Item(id_=7, **({"name": "seven"} if client_version == "1" else {"label": "seven"}))
        extra: dict[str, Any] = {"priority": 5} if client_version == "2" else {}
        job = m.Job(id_=1, mode=safe, items=[item], text="hello", **extra)
        assert store.put.call_one(job).get(timeout=60) is True
        got = store.get.call_one(1).get(timeout=60)
        assert (got.id_, got.mode, got.which(), got.text) == (1, safe, "text", "hello"), got
        name = got.items[0].name if client_version == "1" else got.items[0].label
        assert (got.items[0].id_, name) == (7, "seven"), got
        if client_version == "2":
            # a v1 server does not know `priority`; its copy of the job keeps it all the same
            assert got.priority == 5, got
        assert store.count.call_one().get(timeout=60) == 1
        if client_version == "2":
            # an enumerant the v1 server does not know travels through it unchanged
            job = m.Job(id_=2, mode=m.Mode.paranoid)
            assert store.put.call_one(job).get(timeout=60) is True
            assert store.get.call_one(2).get(timeout=60).mode is m.Mode.paranoid
            # a union member and fields the v1 server does not know: it reads the member as
            # "<unknown>", and its copy (to_bytes of the received view) keeps them, as a copy of
            # a Cap'n Proto struct does
            job = m.Job(id_=3, blob=b"new", priority=9, items=[m.Item(id_=1, size=2**40)])
            assert store.put.call_one(job).get(timeout=60) is True
            got = store.get.call_one(3).get(timeout=60)
            assert (got.id_, got.which(), bytes(got.blob), got.priority) == (3, "blob", b"new", 9)
            assert got.items[0].size == 2**40, got
        # a job passed on unchanged, by a relay of the other version, to another such relay
        # and back: a 64 KiB blob travels out of band, under a field a v1 relay does not know
        blob = bytes(range(256)) * 256
        job = m.Job(
            id_=4,
            items=[m.Item(id_=5)],
            **({"blob": blob} if client_version == "2" else {"text": "t"}),
        )
        got = relays[0].relay.call_one(job, relays[1]).get(timeout=60)
        assert got == job, (got, job)
        assert relays[0].echo.call_one(got).get(timeout=60) == job  # a received job, sent again
    print(f"ok: v{client_version} client, v{server_version} server")


if __name__ == "__main__":
    client(sys.argv[1], sys.argv[2])
