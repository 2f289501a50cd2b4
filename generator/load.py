"""Loading schemas: pycapnp in a child process, its nodes back as JSON, errors as ``SchemaError``.

pycapnp aborts the interpreter on a schema error (an uncaught C++ exception), so the parse runs in
``python -m monarch.generator._extract``; its stderr carries ``file:line: failed: message`` with
0-based lines, which this module turns into ``SchemaError(path, line, column, message)``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any

from monarch._core.errors import SchemaError

from .source import SourceInfo, scan

__all__ = ["Loaded", "load", "standard_imports"]

_FAILED = re.compile(r"(?P<file>[^\s:][^:\n]*?):(?P<line>\d+): failed: (?P<msg>[^\n]*)")


@dataclass
class Loaded:
    """Every node of the requested schemas and their imports.

    Attributes:
        nodes: node id -> ``Node`` as a dict (pycapnp ``to_dict``).
        files: schema path as given -> file node id (requested files only).
        sources: schema path as given -> scanned source info.
        defaults: struct id -> field -> explicit default of a pointer field.
        consts: const id -> value.
        endpoint_options: ``"<interface id>/<method index>"`` -> ``$M.endpoint`` options.
    """

    nodes: dict[int, dict[str, Any]]
    files: dict[str, int]
    sources: dict[str, SourceInfo]
    defaults: dict[int, dict[str, Any]] = field(default_factory=dict)
    consts: dict[int, Any] = field(default_factory=dict)
    endpoint_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    imported: dict[int, str] = field(default_factory=dict)

    def file_id(self, path: str) -> int:
        return self.files[path]


def standard_imports() -> list[str]:
    """Roots of ``/monarch/...`` and of Cap'n Proto's own ``/capnp/...`` schemas (pycapnp ships
    ``capnp/c++.capnp``), the same as ``monarch._idl._schema.standard_import_paths`` gives
    generated code at run time (not imported here: it would load the whole runtime)."""
    import importlib.util
    from importlib import resources

    out = [str(resources.files("monarch.idl"))]
    spec = importlib.util.find_spec("capnp")
    if spec is not None and spec.origin:
        std = Path(spec.origin).resolve().parent.parent
        if (std / "capnp" / "c++.capnp").is_file():
            out.append(str(std))
    return out


def _locate(path: str, line0: int, message: str) -> tuple[int, int]:
    """1-based line and column for a pycapnp error at 0-based ``line0``."""
    line = max(line0, 0) + 1
    try:
        text = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError:
        return line, 1
    if line0 < 0 or line > len(text) or not text:
        return 1, 1
    src = text[line - 1]
    for pattern in (
        r"Not defined: (\S+)",
        r"Import failed: (\S+)",
        r"Duplicate ID (@0x[0-9a-fA-F]+)",
        r"'([^']+)'",
    ):
        m = re.search(pattern, message)
        if m and m.group(1) in src:
            return line, src.index(m.group(1)) + 1
    stripped = len(src) - len(src.lstrip())
    return line, stripped + 1


_BLOCK_TOKEN = re.compile(
    r"#[^\n]*|\"(?:[^\"\\\n]|\\.)*\"|[{}]|@(\d+)\b|\b(struct|interface|enum)\b"
)


def _earlier_uses(text: str, end: int, ordinal: str) -> list[int]:
    """Offsets of the uses of ``@ordinal`` before ``end`` in the declaration open at ``end``."""
    # forward over the text before the error: per open block, its kind and its ordinal uses
    stack: list[tuple[bool, list[int]]] = [(True, [])]
    pending_decl = False
    for t in _BLOCK_TOKEN.finditer(text, 0, end):
        tok = t.group()
        if tok.startswith(("#", '"')):
            continue
        if t.group(2):
            pending_decl = True
        elif tok == "{":
            stack.append((pending_decl, []))
            pending_decl = False
        elif tok == "}":
            own, inner = stack.pop() if len(stack) > 1 else (True, [])
            if not own:  # a group or union: its ordinals belong to the enclosing declaration
                stack[-1][1].extend(inner)
        elif t.group(1) == ordinal:
            stack[-1][1].append(t.start())
    # the innermost open struct/interface/enum and the groups/unions open inside it
    uses: list[int] = []
    for own, found in reversed(stack):
        uses.extend(found)
        if own:
            break
    return uses


def _first_ordinal_use(
    path: str, line: int, col: int
) -> tuple[tuple[int, int], tuple[int, int]] | None:
    """Where the duplicate ordinal reported at ``line:col`` (1-based) is (the column of its
    member's name) and where it was first used in the same struct, interface or enum (groups and
    unions share their struct's ordinals; nested declarations do not)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError:
        return None
    lines = text.splitlines(keepends=True)
    if line > len(lines):
        return None
    start = sum(len(x) for x in lines[: line - 1]) + col - 1
    line_end = start + len(lines[line - 1]) - (col - 1)
    # the parser names the line (its column is a guess): the duplicate is the first ordinal on
    # it, from the column on, that was used before in its declaration
    for m in re.compile(r"@(\d+)").finditer(text, start, line_end):
        uses = _earlier_uses(text, m.start(), m.group(1))
        if uses:
            break
    else:
        return None

    def position(offset: int) -> tuple[int, int]:
        before = text[:offset]
        return before.count("\n") + 1, offset - (before.rfind("\n") + 1) + 1

    line_start = start - (col - 1)
    member = re.search(r"([A-Za-z_]\w*)\s*$", text[line_start : m.start()])
    dup = line_start + member.start() if member else m.start()
    return position(dup), position(min(uses))


def _schema_error(stderr: str, paths: list[str], returncode: int = 1) -> SchemaError:
    m = _FAILED.search(stderr)
    if m is None:
        if returncode < 0:
            try:
                sig = signal.Signals(-returncode).name
            except ValueError:
                sig = f"signal {-returncode}"
            return SchemaError(
                paths[0],
                1,
                1,
                f"the schema parser (pycapnp, in a child process) crashed with {sig}; "
                "the schema may be too deeply nested (e.g. thousands of nested List(...))",
            )
        tail = [ln for ln in stderr.strip().splitlines() if ln.strip()]
        message = tail[-1] if tail else "schema parser failed"
        return SchemaError(paths[0], 1, 1, message.removeprefix("what():").strip())
    file, msg = m.group("file").strip(), m.group("msg").strip()
    # pycapnp names files by its own canonical path: give the user's spelling back
    for p in paths:
        if file == p or (
            file.endswith("/" + PurePath(p).name) and Path(file).name == PurePath(p).name
        ):
            file = p
            break
    line, col = _locate(file, int(m.group("line")), msg)
    if msg.startswith("Duplicate ordinal number"):
        found = _first_ordinal_use(file, line, col)
        if found is not None:
            (line, col), first = found
            msg = f"{msg.rstrip('.')}: first used at {file}:{first[0]}:{first[1]}"
    elif msg == "Not defined: M" and _lacks_actor_import(file):
        msg += ' (add the line: using M = import "/monarch/actor.capnp";)'
    if "does not declare an ID" in msg:
        msg = (
            msg.split("  I've generated")[0]
            + " (add a line like @0x"
            + msg.rsplit("@0x", 1)[-1].rstrip(";")
            + ";)"
        )
        line, col = 1, 1
    return SchemaError(file, line, col, msg)


def _lacks_actor_import(path: str) -> bool:
    try:
        return "/monarch/actor.capnp" not in Path(path).read_text(encoding="utf-8")
    except OSError:
        return False


def _check_file(p: str) -> None:
    """A schema path must name a readable regular file.

    Raises:
        SchemaError: it does not exist, or is a directory, FIFO, socket or device.
    """
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise SchemaError(p, 0, 0, "no such schema file") from None
    except OSError as exc:
        raise SchemaError(p, 0, 0, f"cannot read schema file: {exc.strerror}") from None
    if stat.S_ISDIR(st.st_mode):
        raise SchemaError(p, 0, 0, "is a directory, not a schema file")
    if not stat.S_ISREG(st.st_mode):
        kind = "a FIFO" if stat.S_ISFIFO(st.st_mode) else "not a regular file"
        raise SchemaError(p, 0, 0, f"is {kind}; a schema must be a regular .capnp file")


def load(paths: list[str], import_dirs: list[str]) -> Loaded:
    """Parse ``paths`` (and what they import) in a child process.

    Args:
        paths: schema files, as the user named them (messages use these names).
        import_dirs: ``-I`` directories, searched for ``/absolute`` imports after monarch's own.

    Raises:
        SchemaError: a schema does not parse or does not resolve (path:line:col: message).
    """
    for p in paths:
        _check_file(p)
    imports = [*standard_imports(), *import_dirs]
    request = json.dumps({"paths": paths, "imports": imports})
    proc = subprocess.run(
        [sys.executable, "-m", "monarch.generator._extract", request],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise _schema_error(proc.stderr, paths, proc.returncode)
    data = json.loads(proc.stdout)
    nodes = {int(k): v for k, v in data["nodes"].items()}
    files = {f["path"]: int(f["id"]) for f in data["files"] if f["requested"]}
    imported = {int(f["id"]): f["path"] for f in data["files"] if not f["requested"]}
    sources: dict[str, SourceInfo] = {}
    for p in paths:
        sources[p] = scan(Path(p).read_text(encoding="utf-8"))
        if p not in files:
            raise SchemaError(p, 1, 1, "schema did not load")
    return Loaded(
        nodes=nodes,
        files=files,
        sources=sources,
        defaults={int(k): v for k, v in data["defaults"].items()},
        consts={int(k): v for k, v in data["consts"].items()},
        endpoint_options=data["endpoint_options"],
        imported=imported,
    )
