"""The IDL payloads of a running mesh decode with the reference ``capnp`` tool (``capnp decode``).

A call's parameters and its reply's results are the method's own Cap'n Proto structs; this test
captures both where the client's codec sends and receives them (the reply exactly as it came off
the socket) during real calls on real procs, and decodes them with Cap'n Proto's C++ tool against
the schema copy shipped next to the generated module. The envelope around them needs a capture
hook in the transport (not part of this test).
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
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
