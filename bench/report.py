"""The run's outputs: one table (printed, and as Markdown for the README), ``results.json`` and ``results.png``."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from bench.figure import Figure

HEADER = ("figure", "measured", "reference (same run)", "goal", "result")


def _row(f: Figure) -> tuple[str, str, str, str, str]:
    return (f.title, f.measured, f.reference, f.goal, f.verdict)


def markdown_table(figures: list[Figure]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in _row(f)) + " |" for f in figures]
    return "\n".join(lines)


def text_report(figures: list[Figure]) -> str:
    """The table, then one line of detail per figure (the reason for an n/a, the breakdowns)."""
    notes = [f"- {f.title}: {f.note}" for f in figures if f.note]
    return markdown_table(figures) + ("\n\nNotes:\n" + "\n".join(notes) if notes else "")


def _clean(value: Any) -> Any:
    """JSON without NaN/inf (as null)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def write_json(path: Path, payload: dict[str, Any]) -> None:
    path.write_text(json.dumps(_clean(payload), indent=2, sort_keys=False) + "\n")


def _by_key(figures: list[Figure]) -> dict[str, Figure]:
    return {f.key: f for f in figures}


def write_chart(path: Path, figures: list[Figure], subtitle: str) -> None:
    """Four panels: steps/s against K/L (and the peer), per-step latency against the floor, steps/s over time,
    the submit API against its health endpoint. Panels without data say so."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_key = _by_key(figures)
    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    fig.suptitle(f"make bench - {subtitle}", fontsize=10)
    _throughput_panel(axes[0][0], figures, by_key.get("peer"))
    _latency_panel(axes[0][1], by_key.get("latency"))
    _timeline_panel(axes[1][0], figures, by_key.get("peer"))
    _submit_panel(axes[1][1], by_key.get("submit_api"))
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _empty(ax: Any, title: str, why: str) -> None:
    ax.set_title(title)
    ax.text(0.5, 0.5, why, ha="center", va="center", transform=ax.transAxes, wrap=True)
    ax.set_xticks([])
    ax.set_yticks([])


def _throughput_figs(figures: list[Figure]) -> list[Figure]:
    return [f for f in figures if f.key.startswith("throughput_k") and "steps_per_s" in f.values]


def _throughput_panel(ax: Any, figures: list[Figure], peer: Figure | None) -> None:
    rows = _throughput_figs(figures)
    title = "steps/s with K concurrent tasks vs the limit K/L"
    if not rows:
        _empty(ax, title, "not measured")
        return
    labels = [f"K={f.key.removeprefix('throughput_k')}" for f in rows]
    xs = range(len(rows))
    ax.bar([x - 0.2 for x in xs], [f.values["limit"] for f in rows], 0.4, label="limit K/L", color="#cccccc")
    ax.bar([x + 0.2 for x in xs], [f.values["steps_per_s"] for f in rows], 0.4, label="platform", color="#1f77b4")
    for x, f in zip(xs, rows, strict=True):
        ax.annotate(f"{f.values['share_of_limit']:.0%}", (x + 0.2, f.values["steps_per_s"]), ha="center", va="bottom")
    if peer is not None and "steps_per_s" in peer.values:
        k = f"K={peer.values.get('tasks')}"
        if k in labels:
            x = labels.index(k)
            ax.scatter([x + 0.2], [peer.values["steps_per_s"]], color="#d62728", zorder=3, label="LangGraph peer")
    ax.set_xticks(list(xs), labels)
    ax.set_ylabel("steps/s")
    ax.set_title(title)
    ax.legend()


def _latency_panel(ax: Any, latency: Figure | None) -> None:
    title = "per-step latency, LLM answering at once"
    if latency is None or "p50_s" not in latency.values:
        _empty(ax, title, "not measured")
        return
    v = latency.values
    candidates = [
        ("platform", v.get("p50_s"), v.get("p99_s")),
        ("floor: raw Celery", v.get("floor_p50_s"), v.get("floor_p99_s")),
    ]
    groups = [(name, float(a), float(b)) for name, a, b in candidates if a is not None and b is not None]
    xs = range(len(groups))
    ax.bar([x - 0.2 for x in xs], [g[1] * 1000 for g in groups], 0.4, label="p50")
    ax.bar([x + 0.2 for x in xs], [g[2] * 1000 for g in groups], 0.4, label="p99")
    ax.set_xticks(list(xs), [g[0] for g in groups])
    ax.set_ylabel("ms per step")
    ax.set_title(title)
    ax.legend()


def _timeline_panel(ax: Any, figures: list[Figure], peer: Figure | None) -> None:
    title = "steps committed per second, from submission"
    rows = [f for f in _throughput_figs(figures) if f.values.get("timeline")]
    if not rows:
        _empty(ax, title, "not measured")
        return
    for f in rows:
        points = f.values["timeline"]
        line = ax.plot([p[0] for p in points], [p[1] for p in points], label=f"K={f.key.removeprefix('throughput_k')}")
        ax.axhline(f.values["limit"], linestyle="--", linewidth=0.8, color=line[0].get_color())
    if peer is not None and peer.values.get("timeline"):
        points = peer.values["timeline"]
        ax.plot([p[0] for p in points], [p[1] for p in points], linestyle=":", color="#d62728", label="peer")
    ax.set_xlabel("s since submission (dashed: K/L)")
    ax.set_ylabel("steps/s")
    ax.set_title(title)
    ax.legend()


def _submit_panel(ax: Any, submit: Figure | None) -> None:
    title = "submit API vs its health endpoint"
    if submit is None or "tasks_per_s" not in submit.values:
        _empty(ax, title, "not measured")
        return
    v = submit.values
    names = ["POST /v1/tasks", "GET /healthz"]
    rates = [v["tasks_per_s"], v["health_rps"]]
    bars = ax.bar(names, rates, color=["#1f77b4", "#cccccc"])
    for bar, p99 in zip(bars, [v.get("p99_s"), v.get("health_p99_s")], strict=True):
        if p99 is not None and math.isfinite(p99):
            ax.annotate(f"p99 {p99 * 1000:.0f} ms", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        ha="center", va="bottom")  # fmt: skip
    ax.set_ylabel("requests/s")
    ax.set_title(title)
