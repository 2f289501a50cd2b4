"""Real values through the golden cases of issue 11 §1 (codec level, then on real procs)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.generator import case_actors
from tests.generator.case_actors import (
    CountingDerived,
    EchoPeer,
    EvalRunner,
    NamedShelf,
    PagedShop,
    RecordStore,
    RosterLeader,
)
from tests.generator.gen_cases import CASES


def _through(spec: Any, *args: Any, **kwargs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Encode a call as a client does and decode it as the actor's proc does."""
    payload, buffers = spec.codec.encode_call(args, kwargs)
    return spec.codec.decode_call(memoryview(bytearray(payload)), [memoryview(b) for b in buffers])


def _result(spec: Any, value: Any) -> Any:
    payload, buffers = spec.codec.encode_result(value)
    return spec.codec.decode_result(
        memoryview(bytearray(payload)), [memoryview(b) for b in buffers]
    )


@pytest.fixture(scope="module")
def cases() -> dict[str, ModuleType]:
    import importlib

    case_actors.ensure_gencases()
    names = ["builtin_names", "generic_results", "nested_unions", "nested_lists", "actor_refs",
             "struct_consts", "any_pointer", "cross_folder", "foreign_annotations",
             "pycapnp_names", "shadowed_names", "evolution", "evolution_new",
             "enum_member_names", "multi_extends"]  # fmt: skip
    return {n: importlib.import_module(f"gencases.{n}") for n in names}


def test_builtin_named_enumerant_default_uses_the_renamed_member(
    cases: dict[str, ModuleType],
) -> None:
    m = cases["builtin_names"]
    assert m.Step().phase is m.Phase.eval_ and m.Step().kind is m.Step.Kind.print_
    assert m.DEFAULT_PHASE is m.Phase.eval_ and m.PHASES == (m.Phase.train, m.Phase.eval_)
    step = m.Step.from_bytes(m.Step(id_=3, phases=[m.Phase.none, m.Phase.eval_]).to_bytes())
    assert (step.id_, step.phase, list(step.phases)) == (
        3,
        m.Phase.eval_,
        [m.Phase.none, m.Phase.eval_],
    )
    assert step.lambda_ == 0.5


def test_enumerants_named_like_int_and_enum_attributes_are_renamed_everywhere(
    cases: dict[str, ModuleType],
) -> None:
    import enum

    m = cases["enum_member_names"]
    P = m.Part
    assert [p.name for p in P] == ["real_", "imag_", "mro_", "numerator_", "denominator_",
                                   "conjugate_", "name_", "value_", "plain"]  # fmt: skip
    assert [p.value for p in P] == list(range(9)) and issubclass(P, enum.IntEnum)
    # the int attributes a member would have hidden are int's again
    assert (P.imag_.real, P.imag_.imag, P.denominator_.denominator) == (1, 0, 1)
    # defaults of fields, lists, groups, nested enums, union members and parameters
    s = m.Sample()
    assert (s.part, list(s.parts), s.detail.inner, s.kind) == (
        P.imag_, [P.mro_, P.real_, P.conjugate_], P.denominator_, m.Sample.Kind.mro_,
    )  # fmt: skip
    assert m.DEFAULT_PART is P.mro_ and m.ALL_PARTS == tuple(P)
    assert m.SAMPLE == m.Sample(part=P.real_, parts=[P.conjugate_], kind=m.Sample.Kind.real_)
    got = m.Sample.from_bytes(m.Sample(picked=P.value_, parts=[P.name_]).to_bytes())
    assert got.which() == "picked" and got.picked is P.value_ and list(got.parts) == [P.name_]
    args, kwargs = _through(m._COMPLEX_PICK, sample=m.SAMPLE)
    assert args == (P.conjugate_,) and kwargs == {"sample": m.SAMPLE}
    assert _result(m._COMPLEX_PICK, P.mro_) is P.mro_


def test_keyword_only_parameter_after_a_defaulted_one_round_trips(
    cases: dict[str, ModuleType],
) -> None:
    m = cases["builtin_names"]
    args, kwargs = _through(m._RUNNER_EVAL, id_=9)
    assert args == (m.Phase.eval_,) and kwargs == {"id_": 9}
    with pytest.raises(TypeError, match="positional"):
        m._RUNNER_EVAL.codec.encode_call((m.Phase.train, 9), {})


def test_generic_struct_as_direct_result_keeps_its_binding(cases: dict[str, ModuleType]) -> None:
    m = cases["generic_results"]
    page = m.Page(items=m.Items(list_=[m.Item(id_=1, name="a")]), next_="n", total=1)
    got = _result(m._SHOP_LISTING, page)
    assert type(got) is m.Page and type(got.items) is m.Items
    assert [i.id_ for i in got.items.list_] == [1] and got.next_ == "n"
    nested = _result(m._SHOP_NESTED, m.Box(value=page))
    assert type(nested.value) is m.Page and nested.value.items.list_[0].name == "a"
    texts = _result(m._SHOP_TEXTS, m.Page(items="all", total=1))
    assert texts.items == "all"
    (box,), _ = _through(m._SHOP_BOXED, m.Box(value=m.Item(id_=5)))
    assert box.value.id_ == 5


def test_generic_struct_encoded_alone_reads_back_through_from_any(
    cases: dict[str, ModuleType],
) -> None:
    m = cases["generic_results"]
    page = m.Page.from_bytes(m.Page(items=m.Items(list_=[m.Item(id_=4)]), total=1).to_bytes())
    assert m.Items.from_any(page.items).list_[0].id_ == 4


def test_groups_and_unions_inside_unions_round_trip(cases: dict[str, ModuleType]) -> None:
    E = cases["nested_unions"].Event
    for event in (
        E(id_=1, move=E.Move(dx=-1, dy=2)),
        E(id_=2, key=E.Key(chord=E.Key.Chord(modifiers=3, code=65))),
        E(id_=3, key=E.Key(text="q"), meta=E.Meta(source="kb", kind=E.Meta.Kind(
            remote=E.Meta.Kind.Remote(host="h1", port=7)))),
        E(id_=4, batch=[E(id_=5), E(id_=6, move=E.Move(dx=1))]),
    ):  # fmt: skip
        got = E.from_bytes(event.to_bytes())
        assert got == event, (got, event)
    got = E.from_bytes(E(id_=2, key=E.Key(chord=E.Key.Chord(modifiers=3, code=65))).to_bytes())
    assert got.which() == "key" and got.key.which() == "chord" and got.key.chord.code == 65


def test_lists_of_lists_round_trip(cases: dict[str, ModuleType]) -> None:
    m = cases["nested_lists"]
    grid = m.Grid(
        ints=[[1, 2], [], [3]], texts=[["a"], ["b", "c"]], cells=[[m.Cell(v=0.5)], []],
        colors=[[m.Color.green, m.Color.red]], cube=[[[1.0], [2.0, 3.0]]],
        blobs=[[b"x", b""]], bools=[[True, False]],
    )  # fmt: skip
    got = m.Grid.from_bytes(grid.to_bytes())
    assert got == grid
    assert [list(r) for r in got.ints] == [[1, 2], [], [3]] and got.colors[0][0] is m.Color.green


def test_struct_constants_are_values_of_their_struct(cases: dict[str, ModuleType]) -> None:
    m = cases["struct_consts"]
    assert m.DEFAULTS == m.Limits(max_items=10, name="std", mode=m.Mode.safe, tags=("a", "b"),
                                  inner=m.Limits.Inner(ratio=0.25))  # fmt: skip
    assert m.Limits.from_bytes(m.DEFAULTS.to_bytes()) == m.DEFAULTS
    assert [p.max_items for p in m.PRESETS] == [1, 2] and m.PRESETS[1].mode is m.Mode.fast
    assert m.Holder.LOCAL.name == "nested"


def test_any_pointer_carries_any_struct_read_back_with_from_any(
    cases: dict[str, ModuleType],
) -> None:
    m = cases["any_pointer"]
    env = m.Envelope(kind="item", payload=m.Item(id_=3), body=m.Item(id_=4))
    got = m.Envelope.from_bytes(env.to_bytes())
    assert m.Item.from_any(got.payload).id_ == 3 and m.Item.from_any(got.body).id_ == 4
    again = m.Envelope.from_bytes(got.to_bytes())  # a received view sends on unchanged
    assert m.Item.from_any(again.payload).id_ == 3
    # read many times (each read once counted against the message's traversal limit)
    assert all(m.Item.from_any(got.payload).id_ == 3 for _ in range(20_000))
    assert m.Envelope.from_bytes(m.Envelope(kind="none").to_bytes()).payload is None
    with pytest.raises(TypeError, match="AnyPointer"):
        m.Envelope(payload="text").to_bytes()
    with pytest.raises(TypeError, match="from_any"):
        m.Item.from_any(m.Envelope())


def _wire(payload: Any, buffers: list[Any]) -> tuple[memoryview, list[memoryview]]:
    """What the receiving proc gets: fresh buffers (views of the sender's memory no longer)."""
    return memoryview(bytearray(payload)), [memoryview(bytearray(memoryview(b))) for b in buffers]


def test_older_receiver_sends_on_what_a_newer_sender_wrote(cases: dict[str, ModuleType]) -> None:
    # Cap'n Proto's rule: a copy of a struct keeps the fields and union members that the
    # copier's version of the schema does not know (the old relay sees blob as "<unknown>")
    old, new = cases["evolution"], cases["evolution_new"]
    job = new.Job(id_=7, blob=b"new", priority=-3, items=[new.Item(id_=1, size=2**40, tags=["t"])])
    (seen,), _ = old._RELAY_ECHO.codec.decode_call(
        *_wire(*new._RELAY_ECHO.codec.encode_call((job,), {}))
    )
    assert seen.which() == "<unknown>" and seen.id_ == 7
    # returned as received (a field of the result), copied as a message (to_bytes), re-sent
    assert (
        new._RELAY_ECHO.codec.decode_result(*_wire(*old._RELAY_ECHO.codec.encode_result(seen)))
        == job
    )
    assert new.Job.from_bytes(seen.to_bytes()) == job
    kept = old.Job.from_bytes(seen.to_bytes())
    for _ in range(50):  # each raw copy once read the whole message against its traversal limit
        assert new.Job.from_bytes(kept.to_bytes()) == job
    # a received list sent on whole keeps every element whole
    jobs = [job, new.Job(id_=8, text="t")]
    (seen_jobs,), _ = old._RELAY_ECHO_LIST.codec.decode_call(
        *_wire(*new._RELAY_ECHO_LIST.codec.encode_call((jobs,), {}))
    )
    got = new._RELAY_ECHO_LIST.codec.decode_result(
        *_wire(*old._RELAY_ECHO_LIST.codec.encode_result(seen_jobs))
    )
    assert list(got) == jobs
    # a new list of received elements: each is copied into an element of this version's size,
    # so an element's fields past it are lost (as in Cap'n Proto's own element copy); what the
    # element points to (a nested struct, a list) is copied whole
    items = [new.Item(id_=2, size=5, tags=["a"])]
    (seen_items,), _ = old._RELAY_ECHO_ITEMS.codec.decode_call(
        *_wire(*new._RELAY_ECHO_ITEMS.codec.encode_call((items,), {}))
    )
    rebuilt = new._RELAY_ECHO_ITEMS.codec.decode_result(
        *_wire(*old._RELAY_ECHO_ITEMS.codec.encode_result(list(seen_items)))
    )
    assert (rebuilt[0].id_, rebuilt[0].size, list(rebuilt[0].tags)) == (2, 0, [])
    whole = new._RELAY_ECHO_ITEMS.codec.decode_result(
        *_wire(*old._RELAY_ECHO_ITEMS.codec.encode_result(seen_items))
    )
    assert list(whole) == items


def test_out_of_band_union_member_keeps_its_discriminant_and_travels_on_out_of_band(
    cases: dict[str, ModuleType],
) -> None:
    old, new = cases["evolution"], cases["evolution_new"]
    blob = bytes(range(256)) * 64  # 16 KiB: out of band
    job = new.Job(id_=9, blob=blob)
    payload, buffers = new._RELAY_ECHO.codec.encode_call((job,), {})
    assert len(payload) < 1024 and memoryview(buffers[0]).nbytes == len(blob)
    (same,), _ = new._RELAY_ECHO.codec.decode_call(*_wire(payload, buffers))
    assert same.which() == "blob" and bytes(same.blob) == blob  # was "none": member lost
    received = _wire(payload, buffers)
    (seen,), _ = old._RELAY_ECHO.codec.decode_call(*received)
    payload2, buffers2 = old._RELAY_ECHO.codec.encode_result(seen)
    assert buffers2[0] is received[1][0]  # the received buffer is sent on, not copied
    assert new._RELAY_ECHO.codec.decode_result(*_wire(payload2, buffers2)) == job
    # known fields that came out of band are written into a flat copy (to_bytes) ...
    (mine,), _ = new._RELAY_ECHO.codec.decode_call(*_wire(payload, buffers))
    assert new.Job.from_bytes(mine.to_bytes()) == job
    # ... an unknown one cannot be: pycapnp writes fields by name (docs/idl.md, evolution)
    with pytest.raises(ValueError, match=r"'job\.blob' into a flat copy"):
        seen.to_bytes()


def test_imports_across_folders_load_and_round_trip(cases: dict[str, ModuleType]) -> None:
    m = cases["cross_folder"]
    units = m._m_units
    job = m.Job(id_=m._m_ids.Id(hi=1, lo=2), budget=units.Quantity(value=2.5))
    got = m.Job.from_bytes(job.to_bytes())
    assert got.unit is units.Unit.bytes_ and got.budget.unit is units.Unit.seconds
    assert (got.id_.hi, got.id_.lo, got.budget.value) == (1, 2, 2.5)


def test_foreign_annotations_are_ignored(cases: dict[str, ModuleType]) -> None:
    m = cases["foreign_annotations"]
    assert m.Sample.from_bytes(m.Sample(value=-5).to_bytes()).value == -5


def test_fields_named_like_pycapnp_attributes_are_read_and_written_by_name(
    cases: dict[str, ModuleType],
) -> None:
    m = cases["pycapnp_names"]
    rec = m.Record(
        which_=False, schema="s", init=7, copy=["a", "b"], write=b"w", disown=m.Record.Kind.schema,
        adopt=m.Record(schema="inner"), as_reader=m.Record.AsReader(init=3, schema="g"),
    )  # fmt: skip
    got = m.Record.from_bytes(rec.to_bytes())
    assert (got.which_, got.schema, got.init, list(got.copy), bytes(got.write)) == (
        False, "s", 7, ["a", "b"], b"w",
    )  # fmt: skip
    assert got.disown is m.Record.Kind.schema and got.adopt.schema == "inner"
    assert got.which() == "as_reader" and (got.as_reader.init, got.as_reader.schema) == (3, "g")
    assert m.Record().which_ is True and m.Record().init == 4  # the schema's defaults
    again = m.Record.from_bytes(got.to_bytes())  # a view is sent on (copied raw)
    assert again == rec and "schema='s'" in repr(again)
    put = m._STORE_PUT
    args, _ = _through(put, got, "x")
    assert args[0] == rec and args[1] == "x"
    assert _result(put, got).as_reader.schema == "g"


def test_schema_names_that_shadow_the_modules_own_names(cases: dict[str, ModuleType]) -> None:
    m = cases["shadowed_names"]
    assert m.TYPE_CHECKING is True and m.ClassVar.LOCAL == 2
    order = m.Order(
        lines=[m.Order.Item(sku="a")], bought=[m.Item(id_=1), m.Item(id_=2)],
        boxed=m.Box(value=m.Item(id_=3)),
        status=m.Order.Status(seq=m.Order.Sequence(n=2), items=[m.Item(id_=4)]),
    )  # fmt: skip
    got = m.Order.from_bytes(order.to_bytes())
    assert got.lines[0].sku == "a" and [i.id_ for i in got.bought] == [1, 2]
    assert type(got.lines[0]) is m.Order.Item and type(got.bought[0]) is m.Item
    assert m.Item.from_any(got.boxed.value).id_ == 3  # encoded alone: the parameter is unbound
    assert got.which() == "status" and got.status.seq.n == 2 and got.status.items[0].id_ == 4
    t = m.Tensors(torch=torch_ones(), from_any_="f", kind=m.Tensors.Kind_(level=4))
    t = m.Tensors.from_bytes(t.to_bytes())
    assert t.torch.tolist() == [1, 1, 1] and t.enum is m.Tensors.Kind.b and t.from_any_ == "f"
    assert t.kind.level == 4 and (m.IO_, m.IO(n=2).n) == (1, 2)
    args, _ = _through(m._SHELF_BOXED, m.Box(value=m.Sequence(items=[m.Item(id_=9)])))
    assert type(args[0].value) is m.Sequence and args[0].value.items[0].id_ == 9


def torch_ones() -> Any:
    import torch

    return torch.ones(3, dtype=torch.uint8)


@pytest.fixture(scope="module")
def procs() -> Iterator[Any]:
    from monarch.testing import proc_mesh

    with proc_mesh({"gpus": 2}) as p:
        yield p


def test_actor_refs_in_lists_and_unions_on_real_procs(procs: Any) -> None:
    leader = procs.slice(gpus=0).spawn("leader", RosterLeader)
    peers = procs.spawn("peers", EchoPeer)
    assert leader.join.call_one(peers).get(timeout=60) == 1
    assert leader.join.call_one(peers.slice(gpus=1)).get(timeout=60) == 2
    roster = leader.roster.call_one().get(timeout=60)
    assert roster.which() == "peer" and len(roster.peers) == 2
    assert roster.peer.ping.call_one(4).get(timeout=60) == 5  # the last to join: one rank
    refs = leader.peers.call_one().get(timeout=60)
    assert refs[1].ping.call_one(1).get(timeout=60) == 2
    got = peers.slice(gpus=0).hello.call_one(leader, refs).get(timeout=60)
    assert got == 2 + 2


def test_derived_interface_spawns_its_own_mesh_with_base_endpoints(procs: Any) -> None:
    from gencases.inheritance import BaseMesh, DerivedMesh

    mesh = procs.spawn("derived", CountingDerived)
    assert type(mesh) is DerivedMesh and isinstance(mesh, BaseMesh)
    assert list(mesh.extra.call(4).get(timeout=60).values()) == [40, 40]
    assert mesh.slice(gpus=1).ping.call_one().get(timeout=60) == "pong"


def test_interface_extending_several_interfaces_serves_every_parents_endpoints(
    procs: Any,
) -> None:
    from gencases.multi_extends import (
        NamedMesh,
        PingerMesh,
        ProbeMesh,
        Reading,
        ReporterMesh,
        SensorMesh,
        StationMesh,
        TaggerMesh,
    )  # fmt: skip

    from tests.generator.case_actors import DepthProbe, WatchStation

    probes = procs.spawn("probes", DepthProbe)
    assert type(probes) is ProbeMesh
    assert all(isinstance(probes, c) for c in (SensorMesh, PingerMesh, ReporterMesh, NamedMesh))
    one = probes.slice(gpus=1)
    assert one.ping.call_one(4).get(timeout=60) == 5  # Pinger, through Sensor
    assert one.calibrate.call_one(0.5).get(timeout=60) == Reading(value=1.5, unit="m")
    assert one.report.call_one().get(timeout=60).value == 1.5  # Reporter, through Sensor
    one.reset.call_one().get(timeout=60)
    assert one.report.call_one().get(timeout=60).value == 1.0
    assert list(probes.name_.call().get(timeout=60).values()) == ["probe", "probe"]  # Named
    assert [r.value for r in one.probe.call_one(3).get(timeout=60)] == [0.0, 1.0, 2.0]
    station = procs.slice(gpus=0).spawn("station", WatchStation)
    assert type(station) is StationMesh and isinstance(station, TaggerMesh)
    assert station.ping.call_one(3).get(timeout=60) == 6  # the diamond's one Pinger
    assert station.tag.call_one().get(timeout=60) == "station"
    # a reference declared as M.ActorRef(Pinger): a derived mesh is one, and so is the station
    assert station.watch.call_one(one, 7).get(timeout=60) == 8
    other = procs.slice(gpus=1).spawn("station2", WatchStation)  # (itself would wait on itself)
    assert station.watch.call_one(other, 7).get(timeout=60) == 14


def test_enumerants_renamed_with_an_underscore_cross_real_procs(procs: Any) -> None:
    from gencases.enum_member_names import SAMPLE, Part, Sample

    from tests.generator.case_actors import PartPicker

    picker = procs.slice(gpus=1).spawn("picker", PartPicker)
    assert picker.pick.call_one(sample=SAMPLE).get(timeout=60) is Part.conjugate_
    assert picker.pick.call_one(Part.real_, sample=Sample()).get(timeout=60) is Part.imag_
    assert picker.pick.call_one(Part.mro_, sample=SAMPLE).get(timeout=60) is Part.mro_


def test_generic_results_and_builtin_names_on_real_procs(procs: Any) -> None:
    shop = procs.slice(gpus=1).spawn("shop", PagedShop)
    page = shop.listing.call_one(3).get(timeout=60)
    assert [i.id_ for i in page.items.list_] == [30, 31] and page.next_ == "p4"
    assert shop.nested.call_one().get(timeout=60).value.items.list_[0].id_ == 70
    assert shop.texts.call_one().get(timeout=60).items == "all"
    from gencases.builtin_names import Phase, Step

    runner = procs.slice(gpus=0).spawn("runner", EvalRunner)
    assert runner.eval_.call_one(id_=2).get(timeout=60) is Phase.eval_
    assert runner.eval_.call_one(Phase.train, id_=2).get(timeout=60) is Phase.print_
    step = runner.print_.call_one(Step(id_=1, type_="t")).get(timeout=60)
    assert (step.id_, step.type_, step.phase, step.from_) == (2, "t!", Phase.eval_, -1)


def test_new_user_schema_runs_on_real_procs_and_a_breaking_edit_is_caught(
    procs: Any, tmp_path: Path
) -> None:
    from gencases.new_user import Job, Stage

    from tests.generator.case_actors import JobScheduler, JobWorker

    scheduler = procs.slice(gpus=0).spawn("scheduler", JobScheduler)
    workers = procs.spawn("workers", JobWorker)
    assert scheduler.register.call_one(workers.slice(gpus=1)).get(timeout=60) == 1
    page = scheduler.jobs.call_one().get(timeout=60)  # Page[Jobs]; stage defaults to Stage.eval_
    first, idle = page.items.list_
    assert (first.stage, first.which(), first.running.since, idle.which()) == (
        Stage.eval_, "running", 1.5, "idle",
    )  # fmt: skip
    # the reference inside a group inside a union reaches the worker, which calls back
    done = first.running.worker.run.call_one(Job(id_=7), scheduler).get(timeout=60)
    assert (done.id_, done.stage, done.which(), done.failed.reason) == (
        7, Stage.eval_, "failed", "1 running",
    )  # fmt: skip
    schema = CASES / "new_user" / "new_user.capnp"
    edited = tmp_path / "new_user.capnp"
    edited.write_text(schema.read_text().replace("  jobs @1 (", "  listJobs @1 ("))
    res = subprocess.run(
        [sys.executable, "-m", "monarch.generator.cli", "compat", str(schema), str(edited)],
        capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    assert res.returncode == 1
    assert ": breaking: Scheduler.listJobs @1: renamed from 'jobs'" in res.stdout, res.stdout


def test_names_that_shadow_pycapnp_mesh_and_module_names_on_real_procs(procs: Any) -> None:
    import asyncio

    from gencases.pycapnp_names import Record
    from gencases.shadowed_names import Box, Item, Iterator, Order, Sequence

    store = procs.slice(gpus=0).spawn("store", RecordStore)
    rec = Record(schema="s", copy=["c"], as_reader=Record.AsReader(init=2, schema="g"))
    back = store.put.call_one(rec, schema="x").get(timeout=60)
    assert (back.which_, back.schema, back.adopt.schema) == (False, "xs", "s")
    assert back.adopt.copy == ["c"]
    got = store.get.call_one(5).get(timeout=60)
    assert got.init == 5 and got.which() == "as_reader" and got.as_reader.schema == "g"
    assert store.put.call_one(got, "y").get(timeout=60).adopt.init == 5  # a view sent on

    shelf = procs.slice(gpus=1).spawn("shelf", NamedShelf)
    assert shelf.logger_.call_one(Iterator(pos=3)).get(timeout=60).g == "at 3"
    shelf.stop_.call_one().get(timeout=60)
    assert shelf.size() == 1  # the mesh's own operations are not shadowed
    order = Order(lines=[Order.Item(sku="a")], bought=[Item(id_=1)], boxed=Box(value=Item(id_=2)))
    out = shelf.order.call_one(order).get(timeout=60)
    assert out.lines[0].sku == "a!" and out.status.seq.n == 1 and out.status.items[0].id_ == 1
    seq = Sequence(items=[Item(id_=5), Item(id_=6)])
    box = shelf.boxed.call_one(Box(value=seq)).get(timeout=60)
    assert type(box.value) is Item and box.value.id_ == 6

    async def steps() -> list[int]:
        return [s.n async for s in shelf.stream.stream(3)]

    assert asyncio.run(asyncio.wait_for(steps(), 60)) == [0, 1, 2]
