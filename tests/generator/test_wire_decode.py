"""The wire of a running mesh decodes with the reference ``capnp`` tool (``capnp decode``).

A call's parameters and its reply's results are the method's own Cap'n Proto structs; the first
test captures both where the client's codec sends and receives them during real calls on real
procs, and decodes them with Cap'n Proto's C++ tool against the schema copy shipped next to the
generated module. The others run a job with frame capture on (``MONARCH_CAPTURE_FRAMES_DIR``,
``runtime/_transport/capture.py``) and decode the captured frames themselves, envelope
(``idl/monarch/envelope.capnp``), payload and out-of-band bytes, as docs/wire.md describes them.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.generator import case_actors

pytestmark = pytest.mark.skipif(
    shutil.which("capnp") is None, reason="the capnp tool (Debian package capnproto) is missing"
)


def _decode(schema_dir: Path, type_name: str, payload: bytes) -> str:
    res = subprocess.run(
        ["capnp", "decode", "--short", "-I", _monarch_idl(), f"{schema_dir.name}.capnp", type_name],
        input=payload, cwd=schema_dir.parent, capture_output=True, check=False, timeout=60,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr.decode()
    return res.stdout.decode().strip()


def _monarch_idl() -> str:
    from importlib import resources

    return str(resources.files("monarch.idl"))


@pytest.fixture(scope="module")
def shop() -> Iterator[Any]:
    from monarch.testing import proc_mesh

    with proc_mesh({"gpus": 1}) as procs:
        yield procs.spawn("shop", case_actors.PagedShop)


def _capture(spec: Any, monkeypatch: pytest.MonkeyPatch) -> dict[str, list[bytes]]:
    seen: dict[str, list[bytes]] = {"call": [], "reply": []}
    codec = spec.codec
    encode_call, decode_result = codec.encode_call, codec.decode_result

    def on_call(args: Any, kwargs: Any) -> Any:
        payload, buffers = encode_call(args, kwargs)
        seen["call"].append(bytes(payload))
        return payload, buffers

    def on_reply(payload: Any, buffers: Any) -> Any:
        seen["reply"].append(bytes(payload))
        return decode_result(payload, buffers)

    monkeypatch.setattr(codec, "encode_call", on_call)
    monkeypatch.setattr(codec, "decode_result", on_reply)
    return seen


def test_call_and_reply_payloads_decode_with_the_capnp_tool(
    shop: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gencases.generic_results as m

    seen = _capture(m._SHOP_FIND, monkeypatch)
    page = shop.find.call_one("pen", limit=2).get(timeout=60)
    assert [i.id_ for i in page.items.list_] == [0, 1]
    schema = Path(m.__file__).with_suffix("")
    assert _decode(schema, "Query", seen["call"][0]) == '(text = "pen", limit = 2)'
    assert _decode(schema, "Page(Items)", seen["reply"][0]) == (
        '(items = (list = [(id = 0, name = "pen"), (id = 1, name = "pen")]), next = "", total = 2)'
    )


# -- captured frames of a whole job ----------------------------------------------------------

ROOT = Path(__file__).resolve().parents[2]
IDL = ROOT / "idl"
ENVELOPE_SCHEMA = IDL / "monarch" / "envelope.capnp"


@dataclass
class Frame:
    """One captured envelope file: its bytes, ``capnp decode``'s view of it, the bytes after it."""

    path: Path
    raw: bytes
    env: dict[str, Any]
    buffers: bytes | None


@dataclass
class Job:
    client: Path  # the client's capture folder
    proc: Path  # the proc's
    client_addr: str
    tensors: bool

    def frames(self, folder: Path, direction: str, kind: str) -> list[Frame]:
        out = []
        for p in sorted(folder.glob(f"*-{direction}-{kind}-link*.capnp")):
            raw = p.read_bytes()
            side = p.with_suffix(".buffers")
            env = _parse(_capnp_decode(ENVELOPE_SCHEMA, "Envelope", raw))
            out.append(Frame(p, raw, env, side.read_bytes() if side.exists() else None))
        return out

    def call(self, folder: Path, direction: str, endpoint: str) -> Frame:
        [frame] = [
            f
            for f in self.frames(folder, direction, "call")
            if f.env["endpoint"] == endpoint.encode()
        ]
        return frame

    def reply(self, folder: Path, direction: str, port: int) -> Frame:
        [frame] = [f for f in self.frames(folder, direction, "reply") if f.env["port"] == port]
        return frame


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> Job:
    root = tmp_path_factory.mktemp("frames")
    tensors = importlib.util.find_spec("torch") is not None
    argv = [sys.executable, "-m", "tests.generator.wire_job", *(["--tensors"] if tensors else [])]
    # run() kills the job if it outlives the timeout; its procs end with their owner's link
    res = subprocess.run(
        argv, cwd=ROOT, env={**os.environ, "MONARCH_CAPTURE_FRAMES_DIR": str(root)},
        capture_output=True, timeout=150, check=False,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr.decode()[-4000:]
    out = json.loads(res.stdout.decode().strip().splitlines()[-1])
    assert out["find"] == ["pen", "pen"]
    folders = sorted(root.iterdir())  # <host>-<pid>, one per process that ran a transport
    assert len(folders) == 2, folders  # the client and its one proc
    [client] = [f for f in folders if "wire_job" in (f / "process.txt").read_text()]
    [proc] = [f for f in folders if f != client]
    lines = (client / "process.txt").read_text().splitlines()
    [listen] = [ln.removeprefix("listen ") for ln in lines if ln.startswith("listen ")]
    return Job(client, proc, listen, tensors)


def test_call_and_reply_envelopes_decode_with_the_capnp_tool(job: Job) -> None:
    import gencases.generic_results as m

    call = job.call(job.client, "send", "find")
    env = call.env
    assert env["kind"] == "call" and env["encoding"] == 1  # 1: the payload is Cap'n Proto
    assert env["actor"].startswith(b"shop-") and env["ranks"] == [0]
    assert (
        env["origin"] == env["replyAddr"] == job.client_addr.encode() and env["sender"] == b"client"
    )
    assert env["seq"] >= 1 and env["replyPort"] >= 1 and env["flags"] == 0
    assert env["shape"] == {"labels": [b"gpus"], "offset": 0, "sizes": [1], "strides": [1]}
    assert "buffers" not in env and call.buffers is None  # nothing out of band
    schema = Path(m.__file__).with_suffix("")
    assert _decode(schema, "Query", env["payload"]) == '(text = "pen", limit = 2)'

    reply = job.reply(job.client, "recv", env["replyPort"])
    renv = reply.env
    assert renv["kind"] == "reply" and renv["seq"] == 0  # replies are not sequenced
    assert renv["parts"] == [
        {"rank": 0, "error": False, "length": len(renv["payload"]), "buffers": 0, "last": True}
    ]
    assert _decode(schema, "Page(Items)", renv["payload"]) == (
        '(items = (list = [(id = 0, name = "pen"), (id = 1, name = "pen")]), next = "", total = 2)'
    )
    # the same bytes left one process and entered the other
    assert job.call(job.proc, "recv", "find").raw == call.raw
    assert job.reply(job.proc, "send", env["replyPort"]).raw == reply.raw


def test_sequence_numbers_count_the_senders_frames_to_one_proc(job: Job) -> None:
    sent = []
    for kind in ("hello", "control", "call"):
        sent += job.frames(job.client, "send", kind)
    sent.sort(key=lambda f: f.path.name)
    assert sent[0].env["kind"] == "hello" and sent[0].env["origin"] == job.client_addr.encode()
    sequenced = [f.env for f in sent if f.env["seq"]]  # 1, 2, 3, ... to this proc, in send order
    assert [e["seq"] for e in sequenced] == list(range(1, len(sequenced) + 1))
    tensors = [b"spawn", b"batch"] if job.tensors else []
    assert [e["endpoint"] for e in sequenced] == [b"spawn", b"find", *tensors, b"exit"]


def test_out_of_band_tensor_bytes_follow_the_reply_envelope(job: Job) -> None:
    if not job.tensors:
        pytest.skip("torch is missing: the job made no tensor call")
    from tests.generator.wire_job import batch_tensors

    call = job.call(job.client, "send", "batch")
    reply = job.reply(job.client, "recv", call.env["replyPort"])
    env = reply.env
    inputs, labels = batch_tensors(7)
    directory = b"inputs.data"  # the codec's list of out-of-band field paths, one per line
    assert env["buffers"] == [inputs.numel() * 4, len(directory)]
    assert env["parts"][0]["buffers"] == 2 and "shm" not in env  # small: inline in the stream
    padded = [(n + 7) & ~7 for n in env["buffers"]]
    assert reply.buffers is not None and len(reply.buffers) == sum(padded)
    assert reply.buffers[: env["buffers"][0]] == inputs.numpy().tobytes()
    assert reply.buffers[padded[0] : padded[0] + env["buffers"][1]] == directory
    batch = _parse(_capnp_decode(IDL / "trainer.capnp", "Batch", env["payload"]))
    assert batch["step"] == 7
    inputs_meta = {"dtype": b"float32", "shape": [32, 64], "strides": [64, 1]}
    assert batch["inputs"] == inputs_meta  # no data: it travelled out of band
    assert batch["labels"] == {
        "dtype": b"int64",
        "shape": [32],
        "strides": [1],
        "data": labels.numpy().tobytes(),
    }


def _capnp_decode(schema: Path, type_name: str, message: bytes) -> str:
    res = subprocess.run(
        ["capnp", "decode", "--short", "-I", str(IDL), str(schema), type_name],
        input=message, capture_output=True, check=False, timeout=60,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr.decode()
    return res.stdout.decode().strip()


# capnp's text format (kj::encodeCEscape): these letters, else three octal digits
_ESCAPES = {"a": 7, "b": 8, "t": 9, "n": 10, "v": 11, "f": 12, "r": 13, '"': 34, "'": 39, "\\": 92}
_NAME = re.compile(r"(\w+) = ")
_ATOM = re.compile(r"[^,)\]]+")


def _parse(text: str) -> Any:
    """``capnp decode --short`` output as Python values: structs as dicts, lists as lists,
    Text and Data as bytes, numbers as int or float, enumerants as str, bools as bool."""
    value, end = _value(text, 0)
    assert end == len(text), text[end:]
    return value


def _value(s: str, i: int) -> tuple[Any, int]:
    c = s[i]
    if c in "([":
        close, out_struct, out_list = ")" if c == "(" else "]", {}, []
        i += 1
        while s[i] != close:
            if c == "(":
                m = _NAME.match(s, i)
                assert m, s[i:]
                out_struct[m[1]], i = _value(s, m.end())
            else:
                item, i = _value(s, i)
                out_list.append(item)
            if s.startswith(", ", i):
                i += 2
        return (out_struct if c == "(" else out_list), i + 1
    if c == '"':
        out, i = bytearray(), i + 1
        while s[i] != '"':
            if s[i] == "\\":
                if s[i + 1] in _ESCAPES:
                    out.append(_ESCAPES[s[i + 1]])
                    i += 2
                else:
                    out.append(int(s[i + 1 : i + 4], 8))
                    i += 4
            else:
                out += s[i].encode()
                i += 1
        return bytes(out), i + 1
    m = _ATOM.match(s, i)
    assert m, s[i:]
    atom = m[0]
    if atom in ("true", "false"):
        return atom == "true", m.end()
    for number in (int, float):
        try:
            return number(atom), m.end()
        except ValueError:
            pass
    return atom, m.end()
