"""The text of ``monarch status``: a ``/v1/status`` document as a tree of hosts -> procs -> actor
tables, then the table of meshes.

Plain string work (stdlib only) so that ``monarch status`` needs neither rich nor typer: the
command's whole run stays near the interpreter's own start-up time (issue 14 asks for < 200 ms).
Colour is ANSI SGR, used only where the caller asks (a terminal without ``NO_COLOR``, see
:func:`use_colour`); nothing is truncated, whatever the terminal's width.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from typing import IO, Any

__all__ = ["render_status", "use_colour"]

_SGR = {"bold": "1", "dim": "2", "red": "31", "green": "32", "yellow": "33"}
#: colour per status word (as ``monarch top`` shows them)
_STATUS = {"running": "green", "failed": "red", "stopped": "yellow"}
_ACTOR_COLUMNS = (
    "actor",
    "class",
    "rank",
    "status",
    "queue",
    "handled",
    "last endpoint",
    "failures",
)
_MESH_COLUMNS = ("name", "kind", "extent", "alive")


def use_colour(stream: IO[str]) -> bool:
    """Whether to colour text written to ``stream``: a terminal, and ``NO_COLOR`` unset
    (https://no-color.org) and ``TERM`` not ``dumb``."""
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class _Style:
    def __init__(self, colour: bool) -> None:
        self.colour = colour

    def __call__(self, text: str, *styles: str) -> str:
        if not self.colour or not styles:
            return text
        codes = ";".join(_SGR[s] for s in styles)
        return f"\x1b[{codes}m{text}\x1b[0m"

    def status(self, word: str) -> str:
        return self(word, _STATUS.get(word, "bold"))


def _table(
    header: Sequence[str], rows: Iterable[Sequence[tuple[str, tuple[str, ...]]]], style: _Style
) -> list[str]:
    """Left-aligned columns two spaces apart; each cell is ``(text, styles)``; widths from the
    plain text, so colour codes never shift a column."""
    body = [list(r) for r in rows]
    widths = [len(h) for h in header]
    for r in body:
        for i, (text, _) in enumerate(r):
            widths[i] = max(widths[i], len(text))
    out = ["  ".join(style(h.ljust(w), "bold") for h, w in zip(header, widths)).rstrip()]
    for r in body:
        cells = [style(text.ljust(w), *st) for (text, st), w in zip(r, widths)]
        out.append("  ".join(cells).rstrip())
    return out


def render_status(doc: dict[str, Any], *, system: bool = False, colour: bool = False) -> str:
    """The text ``monarch status`` prints for one ``/v1/status`` document.

    Args:
        doc: the document (``client``, ``collect_ms``, ``hosts`` -> ``procs`` -> ``actors``,
            ``meshes``; see docs/tools.md).
        system: also list the runtime's own actors and meshes (``"system": true``).
        colour: add ANSI colours (status words, headers).

    Returns:
        The text, lines joined with ``\\n``, ending with a newline.

    Raises:
        KeyError: ``doc`` lacks a field the admin endpoint always sends.
    """
    s = _Style(colour)
    c = doc["client"]
    lines = [
        f"{s('client', 'bold')} pid {c['pid']}  {' '.join(c['argv'])}  "
        + s(f"(collected in {doc['collect_ms']:.1f} ms)", "dim")
    ]
    hosts = doc["hosts"]
    for hi, host in enumerate(hosts):
        last_host = hi == len(hosts) - 1
        lines.append(f"{'└── ' if last_host else '├── '}{s('host', 'bold')} {host['hostname']}")
        under_host = "    " if last_host else "│   "
        procs = host["procs"]
        for pi, p in enumerate(procs):
            last_proc = pi == len(procs) - 1
            extra = " " + s("unresponsive", "yellow") if p.get("unresponsive") else ""
            lines.append(
                f"{under_host}{'└── ' if last_proc else '├── '}proc {p['id']} (mesh {p['mesh']} "
                f"rank {p['rank']}) pid {p['pid']} {s.status(p['status'])}{extra}"
            )
            under_proc = under_host + ("    " if last_proc else "│   ")
            if p["failure"]:
                lines.extend(under_proc + s(x, "red") for x in str(p["failure"]).splitlines())
            actors = [a for a in p["actors"] if system or not a["system"]]
            if not actors:
                continue
            rows = [
                (
                    (a["id"], ()),
                    (a["class"], ()),
                    (str(a["rank"]), ()),
                    (a["status"], (_STATUS.get(a["status"], "bold"),)),
                    (str(a["queue_depth"]), ()),
                    (str(a["messages_handled"]), ()),
                    (a["last_endpoint"] or "-", ()),
                    (str(a["failures"]), ("red",) if a["failures"] else ()),
                )
                for a in actors
            ]
            lines.extend(under_proc + row for row in _table(_ACTOR_COLUMNS, rows, s))
    omitted = doc.get("failed_procs_omitted", 0)
    if omitted:
        lines.append(
            s(
                f"({omitted} older failed procs of failed meshes not listed; stop a mesh to drop its procs)",
                "dim",
            )
        )
    meshes = [m for m in doc["meshes"] if system or not m.get("system")]
    lines.append("")
    lines.append(s("meshes", "bold"))
    mesh_rows = [
        (
            (m["name"], ()),
            (m["kind"], ()),
            (json.dumps(m["extent"]), ()),
            (f"{m['alive']}/{m['size']}", () if m["alive"] == m["size"] else ("red",)),
        )
        for m in meshes
    ]
    lines.extend(_table(_MESH_COLUMNS, mesh_rows, s))
    return "\n".join(lines) + "\n"
