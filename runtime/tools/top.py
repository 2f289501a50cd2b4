"""``monarch top``: a live terminal view of a running client's hosts, procs and actors.

A textual app polls the client's admin endpoint (``GET /v1/status``, see
``monarch.tools.admin_client``) every ``interval_s`` seconds and shows the tree hosts -> procs ->
actors with each actor's status, queue depth, messages handled, message rate (from two successive
snapshots), last endpoint and failure count. Selecting an actor (or a proc) shows its details and a
py-spy stack of its proc (``GET /v1/stack``); where ptrace is not allowed the pane shows the error
the endpoint gave. A client that goes away is shown in the status line (the last snapshot stays on
screen, marked stale) and polling goes on, so a client that comes back is picked up.

Monarch's equivalent is its Rust ``monarch-tui`` (docs/source/admin-tui.md there): the same tree and
detail pane, ``p`` for a py-spy stack, ``q`` to quit.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.widgets import Footer, Header, Static, Tree
from textual.widgets.tree import TreeNode

__all__ = ["MeshTop", "Rates", "StatusSource", "iter_actors", "run_top"]

#: Colour per status word, shared by the tree labels and the details pane.
STATUS_STYLE = {
    "ok": "green",
    "running": "green",
    "stopped": "yellow",
    "failed": "bold red",
    "unresponsive": "bold magenta",
}


class StatusSource(Protocol):
    """Where ``monarch top`` reads a client's state from: an
    :class:`~monarch.tools.admin_client.AdminClient` is one.

    Both methods block (they do HTTP); the app calls them from a worker thread.
    """

    def status(self) -> dict[str, Any]:
        """The client's ``GET /v1/status`` document.

        Raises:
            AdminRequestError: the client cannot be reached (gone, or not answering).
        """
        ...

    def stack(self, proc: str) -> dict[str, Any]:
        """``GET /v1/stack?proc=...``: ``{"proc", "pid", "text"}`` or ``{"proc", "error"}``.

        Raises:
            AdminRequestError: the client cannot be reached.
        """
        ...


def iter_actors(
    status: dict[str, Any],
) -> Iterator[tuple[dict[str, Any], dict[str, Any], dict[str, Any]]]:
    """Every ``(host, proc, actor)`` of a ``/v1/status`` document, in document order."""
    for host in status.get("hosts", []):
        for proc in host.get("procs", []):
            for actor in proc.get("actors", []):
                yield host, proc, actor


@dataclass
class Rates:
    """Messages handled per second per actor, from two successive status snapshots."""

    per_actor: dict[str, float] = field(default_factory=dict)
    _last: dict[str, int] = field(default_factory=dict)
    _last_at: float | None = None

    def update(self, status: dict[str, Any]) -> None:
        """Fold in a new snapshot; an actor seen for the first time has no rate yet.

        Args:
            status: a ``/v1/status`` document; its ``collected_at`` (unix seconds) times it.
        """
        at = float(status.get("collected_at") or time.time())
        counts = {a["id"]: int(a.get("messages_handled", 0)) for _, _, a in iter_actors(status)}
        rates: dict[str, float] = {}
        if self._last_at is not None and at > self._last_at:
            dt = at - self._last_at
            for aid, n in counts.items():
                if aid in self._last:
                    rates[aid] = max(0, n - self._last[aid]) / dt
        self.per_actor, self._last, self._last_at = rates, counts, at


def _proc_status(proc: dict[str, Any]) -> str:
    if proc.get("unresponsive") and proc.get("status") == "running":
        return "unresponsive"
    return str(proc.get("status", "?"))


def _styled(word: str) -> Text:
    return Text(word, style=STATUS_STYLE.get(word, ""))


def host_label(host: dict[str, Any]) -> Text:
    """The tree label of a host: hostname, address, status, proc count."""
    t = Text.assemble(
        ("host ", "bold"),
        str(host.get("hostname") or host.get("id")),
        " ",
        _styled(str(host.get("status"))),
    )
    t.append(f"  {len(host.get('procs', []))} procs", style="dim")
    if host.get("addr"):
        t.append(f"  {host['addr']}", style="dim")
    return t


def proc_label(proc: dict[str, Any]) -> Text:
    """The tree label of a proc: mesh, rank, coords, pid, status and its failure if any."""
    coords = ",".join(f"{k}={v}" for k, v in (proc.get("coords") or {}).items())
    t = Text.assemble(("proc ", "bold"), f"{proc.get('mesh')}[{proc.get('rank')}]")
    if coords:
        t.append(f" {{{coords}}}", style="dim")
    t.append(f" pid {proc.get('pid')} ")
    t.append_text(_styled(_proc_status(proc)))
    if proc.get("failure"):
        t.append(f"  {str(proc['failure']).splitlines()[0][:80]}", style="red")
    return t


def actor_label(actor: dict[str, Any], rate: float | None) -> Text:
    """The tree label of an actor: name, rank, status, queue, handled, rate, last endpoint, failures."""
    t = Text.assemble(
        f"{actor.get('mesh')}[{actor.get('rank')}] ", (str(actor.get("class")), "cyan"), " "
    )
    t.append_text(_styled(str(actor.get("status"))))
    t.append(f"  q={actor.get('queue_depth', 0)}")
    t.append(f" handled={actor.get('messages_handled', 0)}")
    t.append(f" {rate:.1f}/s" if rate is not None else " -/s", style="dim")
    if actor.get("last_endpoint"):
        t.append(f" last={actor['last_endpoint']}")
    failures = int(actor.get("failures", 0))
    if failures:
        t.append(f" failures={failures}", style="red")
    if actor.get("system"):
        t.append(" (system)", style="dim")
    return t


class MeshTop(App[None]):
    """The ``monarch top`` textual app.

    Args:
        source: the client's admin endpoint (:class:`StatusSource`).
        interval_s: seconds between two polls of ``/v1/status``.
        title: shown in the header (the client's pid and URL, say).

    State a test can wait on (updated on the app's event loop): :attr:`status` (the last snapshot
    or ``None``), :attr:`error` (why the last poll failed, or ``None``), :attr:`polls` (polls
    finished), :attr:`stack_text` (the details pane's stack, or its error).
    """

    CSS = """
    #main { height: 1fr; }
    #tree { width: 3fr; }
    #side { width: 2fr; border-left: solid $accent; }
    #banner { height: auto; padding: 0 1; }
    #banner.gone { background: $error; color: $text; text-style: bold; }
    """
    BINDINGS = [
        Binding("q", "quit", "Quit"),
        Binding("r", "refresh_now", "Refresh"),
        Binding("p", "stack", "Py-spy stack"),
        Binding("s", "toggle_system", "System actors"),
    ]

    def __init__(
        self, source: StatusSource, *, interval_s: float = 1.0, title: str = "monarch top"
    ) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be > 0 seconds, got {interval_s}")
        super().__init__()
        self.source = source
        self.interval_s = interval_s
        self.title = title
        self.status: dict[str, Any] | None = None
        self.error: str | None = None
        self.polls = 0
        self.rates = Rates()
        self.show_system = False
        self.selected: tuple[str, str] | None = None  # ("actor"|"proc"|"host", id)
        self.stack_text: str | None = None
        self._tree_nodes: dict[str, TreeNode[tuple[str, str]]] = {}

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("connecting...", id="banner")
        with Horizontal(id="main"):
            tree: Tree[tuple[str, str]] = Tree("client", id="tree")
            tree.show_root = True
            tree.root.expand()
            yield tree
            with VerticalScroll(id="side"):
                yield Static(
                    "Select an actor or a proc (arrows, enter) for its details; p for its stack.",
                    id="details",
                )
                yield Static("", id="stack")
        yield Footer()

    def on_mount(self) -> None:
        self.set_interval(self.interval_s, self.action_refresh_now)
        self.action_refresh_now()

    # polling -------------------------------------------------------------------------------

    def action_refresh_now(self) -> None:
        """Poll the client now (key ``r``; also the timer). One poll at a time."""
        self.run_worker(self._poll, thread=True, exclusive=True, group="poll", exit_on_error=False)

    def _poll(self) -> None:
        try:
            status = self.source.status()
        except Exception as exc:  # any failure to reach the client is shown, never a crash
            self.call_from_thread(self._apply_error, f"{type(exc).__name__}: {exc}")
            return
        self.call_from_thread(self._apply_status, status)

    def _apply_error(self, message: str) -> None:
        self.polls += 1
        self.error = message
        banner = self.query_one("#banner", Static)
        banner.add_class("gone")
        stale = " (showing the last snapshot, stale)" if self.status is not None else ""
        banner.update(
            f"client unreachable: {message}{stale}; still retrying every {self.interval_s:g} s"
        )

    def _apply_status(self, status: dict[str, Any]) -> None:
        self.polls += 1
        self.error = None
        self.status = status
        self.rates.update(status)
        banner = self.query_one("#banner", Static)
        banner.remove_class("gone")
        client = status.get("client", {})
        actors = [a for _, _, a in iter_actors(status)]
        failed = sum(a.get("status") == "failed" for a in actors)
        procs = [p for h in status.get("hosts", []) for p in h.get("procs", [])]
        failed_procs = sum(p.get("status") == "failed" for p in procs)
        line = Text.assemble(
            f"client pid {client.get('pid')}  {len(status.get('hosts', []))} hosts  {len(procs)} procs ",
            (f"({failed_procs} failed) " if failed_procs else "", "bold red"),
            f" {len(actors)} actors ",
            (f"({failed} failed)" if failed else "", "bold red"),
            (f"  collected in {status.get('collect_ms', 0):.1f} ms", "dim"),
        )
        banner.update(line)
        self._render_tree(status)
        self._render_details()

    # the tree ----------------------------------------------------------------------------------

    def _render_tree(self, status: dict[str, Any]) -> None:
        tree = self.query_one("#tree", Tree)
        seen: set[str] = set()

        def upsert(
            parent: TreeNode[tuple[str, str]],
            key: str,
            label: Text,
            data: tuple[str, str],
            leaf: bool,
        ) -> TreeNode[tuple[str, str]]:
            seen.add(key)
            node = self._tree_nodes.get(key)
            if node is None:
                node = (
                    parent.add_leaf(label, data=data)
                    if leaf
                    else parent.add(label, data=data, expand=True)
                )
                self._tree_nodes[key] = node
            else:
                node.set_label(label)
            return node

        client = status.get("client", {})
        tree.root.set_label(
            Text.assemble(
                ("client ", "bold"), f"{client.get('name', 'root')} pid {client.get('pid')}"
            )
        )
        for host in status.get("hosts", []):
            hnode = upsert(
                tree.root, "h:" + host["id"], host_label(host), ("host", host["id"]), False
            )
            for proc in host.get("procs", []):
                pnode = upsert(
                    hnode, "p:" + proc["id"], proc_label(proc), ("proc", proc["id"]), False
                )
                for actor in proc.get("actors", []):
                    if actor.get("system") and not self.show_system:
                        continue
                    label = actor_label(actor, self.rates.per_actor.get(actor["id"]))
                    upsert(pnode, "a:" + actor["id"], label, ("actor", actor["id"]), True)
        for key in [k for k in self._tree_nodes if k not in seen]:
            node = self._tree_nodes.pop(key)
            if node.tree is tree and node.parent is not None:
                try:
                    node.remove()
                except Exception:  # already removed with its parent
                    pass

    def labels(self) -> dict[str, str]:
        """The tree's current labels as plain text, keyed ``h:<host>``, ``p:<proc>``, ``a:<actor>``."""
        return {
            k: Text(n.label).plain if isinstance(n.label, str) else n.label.plain
            for k, n in self._tree_nodes.items()
        }

    def action_toggle_system(self) -> None:
        """Show or hide system actors (key ``s``)."""
        self.show_system = not self.show_system
        if self.status is not None:
            self._render_tree(self.status)

    # details and stacks ------------------------------------------------------------------------

    def on_tree_node_highlighted(self, event: Tree.NodeHighlighted[tuple[str, str]]) -> None:
        self._select(event.node.data)

    def on_tree_node_selected(self, event: Tree.NodeSelected[tuple[str, str]]) -> None:
        self._select(event.node.data)
        self.action_stack()

    def select(self, kind: str, ident: str) -> None:
        """Move the tree cursor to a host, proc or actor (what a user does with arrows/enter).

        Raises:
            KeyError: no such node is on screen.
        """
        node = self._tree_nodes[{"host": "h:", "proc": "p:", "actor": "a:"}[kind] + ident]
        tree = self.query_one("#tree", Tree)
        tree.select_node(node)
        self._select(node.data)

    def _select(self, data: tuple[str, str] | None) -> None:
        if data is not None and data != self.selected:
            self.selected = data
            self.stack_text = None
            self.query_one("#stack", Static).update("")
        self._render_details()

    def _find(self) -> tuple[dict[str, Any] | None, dict[str, Any] | None, dict[str, Any] | None]:
        if self.status is None or self.selected is None:
            return None, None, None
        kind, ident = self.selected
        for host in self.status.get("hosts", []):
            if kind == "host" and host["id"] == ident:
                return host, None, None
            for proc in host.get("procs", []):
                if kind == "proc" and proc["id"] == ident:
                    return host, proc, None
                for actor in proc.get("actors", []):
                    if kind == "actor" and actor["id"] == ident:
                        return host, proc, actor
        return None, None, None

    def _render_details(self) -> None:
        details = self.query_one("#details", Static)
        if self.selected is None:
            return
        host, proc, actor = self._find()
        if host is None:
            details.update(
                Text(f"{self.selected[0]} {self.selected[1]} is no longer reported", style="yellow")
            )
            return
        t = Text()

        def row(name: str, value: Any, style: str = "") -> None:
            t.append(f"{name:>15} ", style="bold")
            t.append(f"{value}\n", style=style)

        if actor is not None:
            t.append("actor\n", style="bold underline")
            row("id", actor["id"])
            row("class", actor.get("class"))
            row("mesh", f"{actor.get('mesh')} rank {actor.get('rank')} {actor.get('coords')}")
            row("status", actor.get("status"), STATUS_STYLE.get(str(actor.get("status")), ""))
            row("queue depth", actor.get("queue_depth"))
            row("handled", actor.get("messages_handled"))
            rate = self.rates.per_actor.get(actor["id"])
            row("rate", f"{rate:.2f} msg/s" if rate is not None else "(after the next poll)")
            row("last endpoint", actor.get("last_endpoint") or "-")
            row("failures", actor.get("failures", 0), "red" if actor.get("failures") else "")
            row("system", actor.get("system", False))
        if proc is not None:
            t.append("proc\n", style="bold underline")
            row("id", proc["id"])
            row("mesh", f"{proc.get('mesh')} rank {proc.get('rank')} {proc.get('coords')}")
            row("pid", proc.get("pid"))
            row("host", f"{proc.get('hostname')} {proc.get('addr')}")
            row("status", _proc_status(proc), STATUS_STYLE.get(_proc_status(proc), ""))
            if proc.get("failure"):
                row("failure", proc["failure"], "red")
        t.append("host\n", style="bold underline")
        row("id", host["id"])
        row("hostname", host.get("hostname"))
        row("status", host.get("status"), STATUS_STYLE.get(str(host.get("status")), ""))
        details.update(t)

    def action_stack(self) -> None:
        """Fetch a py-spy stack of the selected actor's (or proc's) proc (key ``p``, or enter)."""
        _, proc, _ = self._find()
        if proc is None:
            self.query_one("#stack", Static).update(
                Text("select an actor or a proc for its stack", style="yellow")
            )
            return
        self.query_one("#stack", Static).update(
            Text(f"py-spy dump of pid {proc.get('pid')}...", style="dim")
        )
        proc_id = str(proc["id"])
        self.run_worker(
            lambda: self._fetch_stack(proc_id),
            thread=True,
            exclusive=True,
            group="stack",
            exit_on_error=False,
        )

    def _fetch_stack(self, proc_id: str) -> None:
        try:
            reply = self.source.stack(proc_id)
        except Exception as exc:  # shown in the pane, never a crash
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        self.call_from_thread(self._apply_stack, proc_id, reply)

    def _apply_stack(self, proc_id: str, reply: dict[str, Any]) -> None:
        pane = self.query_one("#stack", Static)
        if "error" in reply:
            self.stack_text = f"no stack for {proc_id}: {reply['error']}"
            pane.update(Text(self.stack_text, style="yellow"))
        else:
            self.stack_text = (
                f"py-spy dump of {proc_id} (pid {reply.get('pid')})\n{reply.get('text', '')}"
            )
            pane.update(Text(self.stack_text))


def run_top(source: StatusSource, *, interval_s: float = 1.0, title: str = "monarch top") -> None:
    """Run ``monarch top`` in this terminal until the user quits (``q``)."""
    MeshTop(source, interval_s=interval_s, title=title).run()
