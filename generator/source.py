"""Positions and doc comments of declarations, read from the schema's source text.

pycapnp does not expose source info (doc comments, line/column), so this module scans the text.
It understands as much of the Cap'n Proto grammar as it needs: scopes opened by ``struct``,
``interface``, ``enum``, named groups and unions (unnamed unions are transparent), members
(``name @N``), method parameters and results (``method.param``), ``const`` declarations and
``import`` strings. Doc comments follow the Cap'n Proto
convention: the comment lines right after a declaration's ``;`` or ``{``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

__all__ = ["Decl", "SourceInfo", "scan"]

_TOKEN = re.compile(
    r"""(?P<comment>\#[^\n]*)
      | (?P<string>"(?:[^"\\\n]|\\.)*")
      | (?P<ordinal>@(?:0x[0-9a-fA-F]+|\d+))
      | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
      | (?P<number>[0-9][0-9a-fA-FxX.eE+-]*)
      | (?P<newline>\n)
      | (?P<space>[ \t\r]+)
      | (?P<punct>.)""",
    re.VERBOSE,
)
_BLOCKS = {"struct", "interface", "enum"}


@dataclass(frozen=True)
class Decl:
    """Where a declaration is (1-based line and column of its name) and its doc comment."""

    line: int
    column: int
    doc: str


@dataclass
class SourceInfo:
    """What the scan found.

    Attributes:
        decls: qualified name (``("Point", "x")``) -> declaration.
        file_doc: the comment lines after the file id.
        imports: ``(import string, line, column)`` of every ``import "..."``.
    """

    decls: dict[tuple[str, ...], Decl] = field(default_factory=dict)
    file_doc: str = ""
    imports: list[tuple[str, int, int]] = field(default_factory=list)

    def find(self, path: tuple[str, ...]) -> Decl:
        """The declaration at ``path``, or its closest enclosing one (line 1, column 1 at worst)."""
        while path:
            d = self.decls.get(path)
            if d is not None:
                return d
            path = path[:-1]
        return Decl(1, 1, "")


@dataclass
class _Tok:
    kind: str
    text: str
    line: int
    col: int


def _tokens(text: str) -> list[_Tok]:
    out: list[_Tok] = []
    line, line_start = 1, 0
    for m in _TOKEN.finditer(text):
        kind = m.lastgroup or "punct"
        if kind == "newline":
            line += 1
            line_start = m.end()
            continue
        if kind != "space":
            out.append(_Tok(kind, m.group(), line, m.start() - line_start + 1))
    return out


def _doc_after(toks: list[_Tok], i: int) -> str:
    """The comment lines that follow token ``i`` (same line, then consecutive lines)."""
    lines: list[str] = []
    last = toks[i].line if i < len(toks) else 0
    j = i + 1
    while j < len(toks) and toks[j].kind == "comment" and toks[j].line <= last + 1:
        text = toks[j].text[1:]
        lines.append(text[1:] if text.startswith(" ") else text)
        last = toks[j].line
        j += 1
    return "\n".join(lines).strip("\n")


def scan(text: str) -> SourceInfo:
    """Scan schema source text; never raises on text pycapnp accepts."""
    toks = _tokens(text)
    info = SourceInfo()
    code = [i for i, t in enumerate(toks) if t.kind != "comment"]
    # (path, transparent) per open brace
    stack: list[tuple[tuple[str, ...], bool]] = []
    scope: tuple[str, ...] = ()
    pending: tuple[tuple[str, ...], _Tok] | None = None  # a block declaration awaiting its "{"
    member: tuple[tuple[str, ...], _Tok] | None = None  # a member awaiting its ";" or "{"
    depth = 0  # parentheses/brackets nesting
    k = 0
    if code and toks[code[0]].kind == "ordinal":
        semi = next((c for c in code if toks[c].text == ";"), None)
        if semi is not None:
            info.file_doc = _doc_after(toks, semi)
    while k < len(code):
        i = code[k]
        t = toks[i]
        nxt = toks[code[k + 1]] if k + 1 < len(code) else None
        if t.kind == "ident" and t.text == "import" and nxt is not None and nxt.kind == "string":
            info.imports.append((nxt.text[1:-1], nxt.line, nxt.col))
        if t.text in "([":
            depth += 1
        elif t.text in ")]":
            depth -= 1
        elif depth:
            # a method's parameter or result (``g @0 (foo :Foo) -> (x :Int32)``): ``method.foo``
            if member is not None and t.kind == "ident" and nxt is not None and nxt.text == ":":
                path = (*member[0], t.text)
                if path not in info.decls:
                    info.decls[path] = Decl(t.line, t.col, "")
        elif t.kind == "ident" and t.text in _BLOCKS and nxt is not None and nxt.kind == "ident":
            pending = ((*scope, nxt.text), nxt)
            k += 1
        elif t.kind == "ident" and t.text == "const" and nxt is not None and nxt.kind == "ident":
            member = ((*scope, nxt.text), nxt)
            k += 1
        elif t.kind == "ident" and nxt is not None and nxt.kind == "ordinal" and member is None:
            member = ((*scope, t.text), t)
        elif (
            t.kind == "ident"
            and t.text in ("group", "union")
            and member is None
            and pending is None
        ):
            if t.text == "union":
                pending = (scope, t)  # unnamed union: fields stay in the enclosing scope
        elif (
            t.kind == "ident"
            and nxt is not None
            and nxt.text == ":"
            and member is None
            and pending is None
        ):
            after = toks[code[k + 2]] if k + 2 < len(code) else None
            if after is not None and after.text in ("group", "union"):
                member = ((*scope, t.text), t)
        elif t.text == "{":
            opened = pending or member
            if opened is not None:
                path, name_tok = opened
                if path != scope:
                    info.decls[path] = Decl(name_tok.line, name_tok.col, _doc_after(toks, i))
                stack.append((scope, True))
                scope = path
            else:
                stack.append((scope, True))
            pending = member = None
        elif t.text == "}":
            if stack:
                scope = stack.pop()[0]
        elif t.text == ";":
            if member is not None:
                path, name_tok = member
                info.decls[path] = Decl(name_tok.line, name_tok.col, _doc_after(toks, i))
            member = pending = None
        k += 1
    return info
