"""Render the IR to Python source, normalise it, and validate the result.

Rendering uses jinja2 with ``StrictUndefined``; templates only print. Formatting is a fixed,
version-independent normalisation (no external formatter), so output is byte-identical on
every machine.
"""

from __future__ import annotations

import ast
from typing import Any

import jinja2
from monarch._core.errors import GenerationError

from . import ir

__all__ = ["render_module"]

_ABC = {"AsyncIterator", "Awaitable", "Iterator", "Sequence"}


def _docstring(text: str, indent: int) -> str:
    text = text.strip().replace("\\", "\\\\").replace('"""', '\\"\\"\\"')
    if not text:
        text = "Generated."
    lines = text.splitlines()
    if len(lines) == 1:
        one = lines[0]
        return f'"""{one}"""' if not one.endswith('"') else f'"""{one} """'
    pad = " " * indent
    body = "\n".join((pad + ln) if ln.strip() else "" for ln in lines[1:])
    return f'"""{lines[0]}\n{body}\n{pad}"""'


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(_template_dir()),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        trim_blocks=False,
        lstrip_blocks=False,
    )
    env.filters["docstring"] = _docstring
    return env


def _template_dir() -> str:
    from importlib import resources

    return str(resources.files("monarch.generator.templates"))


def _format(source: str) -> str:
    """Strip trailing spaces; blank runs: 2 before top-level statements, at most 1 inside blocks."""
    out: list[str] = []
    blank = 0
    for ln in (x.rstrip() for x in source.splitlines()):
        if not ln:
            blank += 1
            continue
        if out:
            if ln[0] not in " )]":
                top_def = ln.startswith(("class ", "def ", "@"))
                n = 2 if top_def or (blank and out[-1].startswith(" ")) else min(blank, 2)
                if top_def and out[-1].startswith("@"):
                    n = 0
            else:
                n = min(blank, 1)
            out.extend([""] * n)
        blank = 0
        out.append(ln)
    return "\n".join(out) + "\n"


def _exports(m: ir.Module) -> list[str]:
    names = [e.name for e in m.enums] + [s.name for s in m.structs]
    names += [c.name for c in m.consts if not c.owner]
    names += [s.name for s in m.internal_structs if not s.name.startswith("_")]
    for i in m.interfaces:
        names += [i.name, i.mesh]
    return sorted(names)


def _names(body: list[ast.stmt], offset: int) -> list[tuple[str, int]]:
    out: list[tuple[str, int]] = []
    for node in body:
        if isinstance(node, ast.ClassDef | ast.FunctionDef):
            out.append((node.name, node.lineno + offset))
        elif isinstance(node, ast.Assign):
            out += [(t.id, node.lineno + offset) for t in node.targets if isinstance(t, ast.Name)]
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            out.append((node.target.id, node.lineno + offset))
    return out


def _top_level_names(source: str) -> list[tuple[str, int]]:
    """``(name, line)`` of every top-level definition; raises ``SyntaxError``.

    The formatter puts two blank lines before every top-level definition, so the source splits
    there into chunks that parse on their own, and only one chunk's AST is alive at a time (the
    whole AST of a 300k-line module, 10k structs, took 600 MB). A split inside a string (a
    docstring with two blank lines) makes a chunk fail; then the whole source is parsed.
    """
    out: list[tuple[str, int]] = []
    offset = 0
    try:
        for chunk in source.split("\n\n\n"):
            out += _names(ast.parse(chunk).body, offset)
            offset += chunk.count("\n") + 3
        return out
    except SyntaxError:
        return _names(ast.parse(source).body, 0)


def _validate(source: str, m: ir.Module) -> None:
    try:
        names = _top_level_names(source)
    except SyntaxError as exc:  # a generator bug, not a schema problem
        raise GenerationError(f"{m.source}: generated code does not parse: {exc}") from exc
    seen: set[str] = set()
    for n, _line in names:
        if n in seen and n != "__all__":
            raise GenerationError(
                f"{m.source}: name clash: {n!r} is defined twice in the generated module"
            )
        seen.add(n)


def render_module(m: ir.Module) -> str:
    """The Python source of one generated module.

    Raises:
        GenerationError: the output does not parse or defines a name twice.
    """
    env = _environment()
    names: set[str] = set(m.typing_names)
    abc_typing = sorted(names & _ABC)
    typing = sorted(
        (names - _ABC)
        | ({"TYPE_CHECKING"} if m.uses_torch else set())
        | ({"TypeVar"} if m.typevars else set())
    )
    n = m.names

    def spelled(name: str) -> str:  # an import under the module's own spelling of the name
        return name if n[name] == name else f"{name} as {n[name]}"

    context: dict[str, Any] = {
        "m": m,
        "n": n,
        "abc_names": [spelled(x) for x in m.abc_names],
        "abc_typing": [spelled(x) for x in abc_typing],
        "typing": [spelled(x) for x in typing],
        "import_enum": "import " + spelled("enum"),
        "import_torch": "import " + spelled("torch"),
        "exports": _exports(m),
    }
    source = _format(env.get_template("module.py.jinja").render(**context))
    _validate(source, m)
    return source
