"""Implementations of actors from the golden cases, importable by spawned procs.

The cases are generated into a package ``gencases`` under a fixed folder (named after the uid
and a digest of the cases and the generator), so a spawned proc that imports this module finds
the same package without help from the parent: :func:`ensure_gencases` generates it once.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

_HERE = Path(__file__).resolve().parent
_ROOT = _HERE.parents[1]


def _digest() -> str:
    h = hashlib.sha256()
    for folder in (_HERE / "cases", _ROOT / "generator", _ROOT / "templates"):
        for p in sorted(folder.rglob("*")):
            if p.is_file() and p.suffix in (".capnp", ".args", ".py", ".jinja"):
                h.update(p.relative_to(_ROOT).as_posix().encode())
                h.update(p.read_bytes())
    return h.hexdigest()[:16]


def ensure_gencases() -> Path:
    """The folder whose ``gencases`` package holds every case's module (made when missing);
    it is put on ``sys.path``."""
    root = Path(tempfile.gettempdir()) / f"monarch-gencases-{os.getuid()}-{_digest()}"
    if not (root / "gencases" / "__init__.py").exists():
        sys.path.insert(0, str(_HERE))
        from gen_cases import CASE_NAMES, generate_outputs  # type: ignore[import-not-found]  # on sys.path just above
        from monarch.generator.generate import write

        tmp = Path(tempfile.mkdtemp(prefix=root.name + ".", dir=root.parent))
        for name in CASE_NAMES:
            write(generate_outputs(name), tmp / "gencases")
        try:
            os.rename(tmp, root)
        except OSError:  # another process made it first: theirs is identical
            pass
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    return root


ensure_gencases()

from gencases.actor_refs import Leader, LeaderMesh, Peer, PeerMesh, Roster  # noqa: E402
from gencases.builtin_names import Phase, Runner, Step  # noqa: E402
from gencases.generic_results import Box, Catalog, Item, Items, Page, Shop  # noqa: E402
from gencases.inheritance import Derived  # noqa: E402


class RosterLeader(Leader):
    """Keeps the peers that joined; answers with references to itself and them."""

    def __init__(self) -> None:
        self.joined: list[PeerMesh] = []

    def join(self, peer: PeerMesh) -> int:
        self.joined.append(peer)
        return len(self.joined)

    def roster(self) -> Roster:
        return Roster(peers=self.joined, peer=self.joined[-1] if self.joined else None)

    def peers(self) -> Sequence[PeerMesh]:
        return self.joined


class EchoPeer(Peer):
    """Calls the leader back through the reference it was given."""

    def hello(self, leader: LeaderMesh, others: Sequence[PeerMesh]) -> int:
        return len(others) + len(leader.peers.call_one().get(timeout=30))

    def ping(self, n: int) -> int:
        return n + 1


class PagedShop(Shop):
    """Answers generic results (``Page(Items)``, ``Box(Page(Items))``) from its arguments."""

    def listing(self, page: int) -> Page[Items]:
        items = Items(list_=[Item(id_=page * 10 + i, name=f"i{i}") for i in range(2)])
        return Page(items=items, next_=f"p{page + 1}", total=2)

    def boxed(self, box: Box[Item]) -> Box[Item]:
        assert box.value is not None
        return Box(value=Item(id_=box.value.id_ + 1, name=box.value.name))

    def pages(self, pages: Sequence[Page[Items]]) -> Sequence[Page[Items]]:
        return list(reversed(pages))

    def nested(self) -> Box[Page[Items]]:
        return Box(value=self.listing(7))

    def texts(self) -> Page[str]:
        return Page(items="all", next_="", total=1)

    def find(self, text: str = "", limit: int = 10) -> Page[Items]:
        items = Items(list_=[Item(id_=i, name=text) for i in range(min(limit, 3))])
        return Page(items=items, next_="", total=len(items.list_))

    def catalog(self, c: Catalog) -> Catalog:
        return Catalog(first=c.first, pages=[c.first, c.first], names=c.names)


class EvalRunner(Runner):
    """Builtin-named endpoints and fields, a keyword-only parameter after a defaulted one."""

    def eval_(self, phase: Phase = Phase.eval_, *, id_: int) -> Phase:
        return Phase(id_ % 4) if phase is Phase.train else phase

    def print_(self, from_: Step) -> Step:
        return Step(id_=from_.id_ + 1, type_=from_.type_ + "!", phase=from_.phase, from_=-1)


from gencases.new_user import Job, Jobs, Scheduler, SchedulerMesh, Stage, Worker, WorkerMesh  # noqa: E402
from gencases.new_user import Page as UserPage  # noqa: E402


class JobScheduler(Scheduler):
    """Hands each registered worker a running job; lists them as a generic page."""

    def __init__(self) -> None:
        self.workers: list[WorkerMesh] = []

    def register(self, worker: WorkerMesh) -> int:
        self.workers.append(worker)
        return len(self.workers)

    def jobs(self, stage: Stage = Stage.eval_) -> UserPage[Jobs]:
        running = [
            Job(id_=i, stage=stage, running=Job.Running(since=1.5, worker=w))
            for i, w in enumerate(self.workers)
        ]
        return UserPage(items=Jobs(list_=[*running, Job(id_=99, idle=None)]), cursor="end")


class JobWorker(Worker):
    """Runs a job by asking the scheduler (through the reference it got) what is running."""

    def run(self, job: Job, scheduler: SchedulerMesh) -> Job:
        page = scheduler.jobs.call_one(Stage.input_).get(timeout=30)
        running = [j for j in page.items.list_ if j.which() == "running"]
        return Job(
            id_=job.id_, stage=job.stage, failed=Job.Failed(reason=f"{len(running)} running")
        )


from gencases.pycapnp_names import Record, Store  # noqa: E402
from gencases.shadowed_names import AsyncIterator as CaseAsyncIterator  # noqa: E402
from gencases.shadowed_names import Box as ShadowBox  # noqa: E402
from gencases.shadowed_names import Generic as CaseGeneric  # noqa: E402
from gencases.shadowed_names import Item as ShadowItem  # noqa: E402
from gencases.shadowed_names import Iterator as CaseIterator  # noqa: E402
from gencases.shadowed_names import Order, Shelf  # noqa: E402
from gencases.shadowed_names import Sequence as CaseSequence  # noqa: E402


class RecordStore(Store):
    """Sends back what it received (views of fields named like pycapnp's own attributes)."""

    def __init__(self) -> None:
        self.last = Record()

    def put(self, which: Record, schema: str) -> Record:
        self.last = which
        return Record(which_=not which.which_, schema=schema + which.schema, adopt=which)

    def get(self, init: int) -> Record:
        return Record(init=init, copy=list(self.last.copy), as_reader=self.last.as_reader)


class NamedShelf(Shelf):
    """Endpoints named like the actor's and mesh's own attributes; helper-named structs."""

    def logger_(self, it: CaseIterator) -> CaseGeneric:
        self.logger.info("position %d", it.pos)  # the base class's logger is still there
        return CaseGeneric(g=f"at {it.pos}")

    def stop_(self) -> None:
        pass

    def order(self, order: Order) -> Order:
        return Order(
            lines=[Order.Item(sku=i.sku + "!") for i in order.lines],
            bought=order.bought,
            boxed=order.boxed,
            status=Order.Status(seq=Order.Sequence(n=len(order.bought)), items=order.bought),
        )

    def boxed(self, box: ShadowBox[CaseSequence]) -> ShadowBox[ShadowItem]:
        assert box.value is not None
        return ShadowBox(value=box.value.items[-1])

    def stream(self, n: int) -> Iterator[CaseAsyncIterator]:
        for i in range(n):
            yield CaseAsyncIterator(n=i)


class CountingDerived(Derived):
    """Implements a derived interface: its own endpoint and the base's."""

    def ping(self) -> str:
        return "pong"

    def extra(self, n: int) -> int:
        return n * 10


from gencases.enum_member_names import Complex, Part, Sample  # noqa: E402
from gencases.multi_extends import PingerMesh, Probe, Reading, Station  # noqa: E402


class PartPicker(Complex):
    """Answers the part given (an enumerant renamed with ``_``), or the sample's."""

    def pick(self, part: Part = Part.conjugate_, *, sample: Sample) -> Part:
        return sample.part if part is Part.real_ else part


class DepthProbe(Probe):
    """Implements every endpoint of Probe: its own, Sensor's, Pinger's, Reporter's, Named's."""

    def __init__(self) -> None:
        self.offset = 0.0

    def ping(self, n: int) -> int:
        return n + 1

    def report(self) -> Reading:
        return Reading(value=1.0 + self.offset, unit="m")

    def reset(self) -> None:
        self.offset = 0.0

    def calibrate(self, offset: float) -> Reading:
        self.offset = offset
        return self.report()

    def name_(self) -> str:
        return "probe"

    def probe(self, depth: int) -> Sequence[Reading]:
        return [Reading(value=float(i)) for i in range(depth)]


class WatchStation(Station):
    """A diamond (Pinger through Sensor and Tagger); pings the meshes it is given."""

    async def ping(self, n: int) -> int:
        return n * 2

    async def report(self) -> Reading:
        return Reading(value=-1.0)

    async def reset(self) -> None:
        pass

    async def calibrate(self, offset: float) -> Reading:
        return Reading(value=offset)

    async def tag(self) -> str:
        return "station"

    async def watch(self, pinger: PingerMesh, n: int) -> int:
        return await pinger.ping.call_one(n)
