"""Turns aggregated medians into the report: rows with ratios and targets, a rich table, PNGs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.markup import escape

from benchmarks._catalog import DEFAULT_LOOP, RAW_ROWS, RAW_UDS_ROWS, Row, headline_rows, raw_name

OURS, MONARCH, RAW = "ours", "torchmonarch", "raw"


def _value(agg: dict[str, Any], system: str, metric: str) -> float | None:
    slot = agg.get(system, {}).get(metric)
    return None if slot is None else float(slot["value"])


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _row(agg: dict[str, Any], row: Row, section: str) -> dict[str, Any]:
    ours = _value(agg, OURS, row.metric)
    monarch = _value(agg, MONARCH, row.metric)
    raw = _value(agg, RAW, row.raw) if row.raw else None
    meta = agg.get(OURS, {}).get(row.metric) or agg.get(MONARCH, {}).get(row.metric) or {}
    return {
        "section": section,
        "metric": row.metric,
        "label": row.label,
        "unit": meta.get("unit") or _unit_from_name(row.metric),
        "better": meta.get("better"),
        OURS: ours,
        MONARCH: monarch,
        "raw_metric": row.raw,
        RAW: raw,
        "ratio_ours_monarch": _ratio(ours, monarch),
        "ratio_ours_raw": _ratio(ours, raw),
        "ratio_monarch_raw": _ratio(monarch, raw),
        "target": row.target.text() if row.target else None,
        "target_met": row.target.met(ours, monarch) if row.target else None,
        "rounds": {s: agg.get(s, {}).get(row.metric, {}).get("rounds") for s in (OURS, MONARCH)},
    }


def build(agg: dict[str, Any], meta: dict[str, Any], runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The JSON document: meta, table rows, sweep curves, raw metrics, per-run errors."""
    rows = [_row(agg, r, "headline") for r in headline_rows(DEFAULT_LOOP)]
    sweeps: dict[str, dict[str, list[list[float]]]] = {}
    for system, per in agg.items():
        for slot in per.values():
            if slot.get("group"):
                sweeps.setdefault(slot["group"], {}).setdefault(system, []).append(
                    [slot["x"], slot["value"]]
                )
    for curves in sweeps.values():
        for pts in curves.values():
            pts.sort()
    for group, section, raw_group in (
        ("payload_rtt_us", "payload sweep (bytes, echoed)", f"payload_rtt_us[{DEFAULT_LOOP}]"),
        ("mesh_call_us", "call() to N actors", None),
    ):
        xs = sorted({x for pts in sweeps.get(group, {}).values() for x, _ in pts})
        for x in xs:
            size = int(x)
            label = _bytes_label(size) if group == "payload_rtt_us" else f"{size} actors"
            raw_metric = f"uds_payload_rtt_us/{size}[{DEFAULT_LOOP}]" if raw_group else None
            rows.append(_row(agg, Row(f"{group}/{size}", label, raw_metric), section))
    for name, label in RAW_ROWS:
        rows.append(_raw_row(agg, name, label))
    for base, label in RAW_UDS_ROWS:
        for loop in ("uvloop", "asyncio"):
            if raw_name(base, loop) in agg.get(RAW, {}):
                rows.append(_raw_row(agg, raw_name(base, loop), f"{label} ({loop})"))
    errors = [
        {k: r.get(k) for k in ("system", "workload", "round", "error", "stderr_tail")}
        for r in runs
        if "error" in r
    ]
    leftovers = [
        {k: r.get(k) for k in ("system", "workload", "round", "leftover_processes")}
        for r in runs
        if r.get("leftover_processes")
    ]
    return {
        "meta": meta,
        "rows": rows,
        "sweeps": sweeps,
        "errors": errors,
        "leftover_processes": leftovers,
        "runs": [
            {
                k: r.get(k)
                for k in ("system", "workload", "round", "wall_s", "implementation", "metrics")
            }
            for r in runs
        ],
    }


def _unit_from_name(metric: str) -> str | None:
    """Unit from the metric naming convention (``..._us``, ``..._per_s``, ``..._MBps``)."""
    base = metric.split("/")[0].split("[")[0]
    for suffix, unit in (
        ("_per_s", "/s"),
        ("_us", "us"),
        ("_ms", "ms"),
        ("_s", "s"),
        ("_MBps", "MB/s"),
        ("_GBps", "GB/s"),
    ):
        if base.endswith(suffix):
            return unit
    return None


def _raw_row(agg: dict[str, Any], name: str, label: str) -> dict[str, Any]:
    slot = agg.get(RAW, {}).get(name, {})
    return {
        "section": "raw baselines",
        "metric": name,
        "label": label,
        "unit": slot.get("unit"),
        "better": slot.get("better"),
        OURS: None,
        MONARCH: None,
        "raw_metric": name,
        RAW: slot.get("value"),
        "ratio_ours_monarch": None,
        "ratio_ours_raw": None,
        "ratio_monarch_raw": None,
        "target": None,
        "target_met": None,
        "rounds": {RAW: slot.get("rounds")},
    }


def _bytes_label(n: int) -> str:
    for unit, size in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:g} {unit}"
    return f"{n} B"


def _fmt(v: float | None) -> str:
    if v is None:
        return "-"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.3g}"


def _fmt_ratio(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}x"


def print_table(report: dict[str, Any], console: Any) -> None:
    from rich.table import Table

    meta = report["meta"]
    table = Table(
        title=f"monarch-idl vs torchmonarch ({meta['rounds']} interleaved rounds, medians"
        f"{', quick' if meta['quick'] else ''})",
        caption="ratio = ours / other in the metric's own unit (latency: lower is better; "
        "throughput: higher is better). Tensor MB/s = 16 MiB payload / round-trip time.",
    )
    for col, just in (
        ("metric", "left"),
        ("unit", "left"),
        ("ours", "right"),
        ("torchmonarch", "right"),
        ("raw", "right"),
        ("ours/monarch", "right"),
        ("ours/raw", "right"),
        ("target", "left"),
    ):
        table.add_column(col, justify=just)  # type: ignore[arg-type]  # rich's Literal
    section = None
    for row in report["rows"]:
        if row["section"] != section:
            section = row["section"]
            table.add_section()
            table.add_row(f"[bold]{section}[/]")
        met = row["target_met"]
        target = row["target"] or ""
        if met is not None:
            target += " [green]met[/]" if met else " [red]not met[/]"
        table.add_row(
            row["label"],
            row["unit"] or "",
            _fmt(row[OURS]),
            _fmt(row[MONARCH]),
            _fmt(row[RAW]),
            _fmt_ratio(row["ratio_ours_monarch"]),
            _fmt_ratio(row["ratio_ours_raw"]),
            target,
        )
    console.print(table)
    for note_sys, note in meta.get("notes", {}).items():
        console.print(f"[yellow]{note_sys}:[/] {escape(note)}")
    for err in report["errors"]:
        console.print(
            f"[red]error[/] {err['system']} {err['workload']} round {err['round']}: "
            f"{escape((err['error'] or '')[:200])}"
        )
    for lo in report["leftover_processes"]:
        console.print(
            f"[yellow]leftover[/] {lo['system']} {lo['workload']} round {lo['round']}: "
            f"{lo['leftover_processes']} process(es) still alive after exit, killed"
        )


def plots(report: dict[str, Any], outdir: Path) -> list[Path]:
    """PNG curves: call latency vs payload size, call() latency vs mesh size."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    sweeps = report["sweeps"]
    styles = {OURS: ("monarch-idl", "o-"), MONARCH: ("torchmonarch 0.7", "s-")}
    written = []
    specs = [
        (
            "payload_rtt_us",
            "call_one round trip vs payload (bytes echoed)",
            "payload bytes",
            "payload_latency.png",
            f"payload_rtt_us[{DEFAULT_LOOP}]",
            f"raw UDS echo ({DEFAULT_LOOP})",
        ),
        (
            "mesh_call_us",
            "call() to N actors (4 procs for N >= 4), replies gathered",
            "actors",
            "mesh_broadcast.png",
            None,
            None,
        ),
    ]
    for group, title, xlabel, fname, raw_group, raw_label in specs:
        curves = sweeps.get(group, {})
        if not curves:
            continue
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for system, (label, style) in styles.items():
            pts = curves.get(system)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=label)
        raw_pts = sweeps.get(raw_group or "", {}).get(RAW)
        if raw_pts:
            ax.plot([p[0] for p in raw_pts], [p[1] for p in raw_pts], "k--", label=raw_label)
        ax.set_xscale("log", base=2 if group == "mesh_call_us" else 10)
        ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("median latency (us)")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path = outdir / fname
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def markdown(report: dict[str, Any]) -> str:
    """The table as GitHub markdown, with the run's conditions (for ``RESULTS.md``)."""
    meta = report["meta"]
    versions = ", ".join(f"{k} {v}" for k, v in meta["versions"].items() if v)
    lines = [
        f"Rounds: {meta['rounds']} interleaved{' (quick)' if meta['quick'] else ''}; "
        f"{meta['cpus']} CPUs; Python {meta['python']}; {versions}; commit {meta['git_commit']}.",
        "Values are medians over rounds of per-process medians; ratio = ours / other.",
        "",
        "| metric | unit | ours | torchmonarch | raw | ours/monarch | ours/raw | target |",
        "|---|---|--:|--:|--:|--:|--:|---|",
    ]
    section = None
    for row in report["rows"]:
        if row["section"] != section:
            section = row["section"]
            lines.append(f"| **{section}** | | | | | | | |")
        target = row["target"] or ""
        if row["target_met"] is not None:
            target += " met" if row["target_met"] else " **not met**"
        lines.append(
            f"| {row['label']} | {row['unit'] or ''} | {_fmt(row[OURS])} | {_fmt(row[MONARCH])} "
            f"| {_fmt(row[RAW])} | {_fmt_ratio(row['ratio_ours_monarch'])} "
            f"| {_fmt_ratio(row['ratio_ours_raw'])} | {target} |"
        )
    return "\n".join(lines) + "\n"
