"""Per-step latency: one task of N steps with the LLM answering at once, against the floor's chain with as many
hops per step as ours (one: the think worker runs ``write_file`` itself; two with ``AUTOGPT_INLINE_ACT=false``).

A step's latency is the interval between two consecutive step commits of the task (``steps.committed_at``), so
it covers everything a step costs: both deliveries, the claims, the LLM round trip, the ledger writes and the
publishes. The floor's is the interval between two consecutive step boundaries of its chain.
"""

from __future__ import annotations

import itertools

from bench.env import Sql
from bench.figure import Figure, judge, ms, percentile
from bench.floor import FloorResult
from bench.stack import Platform, steps_goal

KEY = "latency"
GOAL_FACTOR = 2.5


PARTS = ("think queue", "think", "act queue", "act")


def measure_latency(platform: Platform, db: Sql, steps: int) -> tuple[list[float], dict[str, float]]:
    """The intervals between consecutive step commits, and the median of each part of them: waiting for the think
    delivery, the think phase (claim to proposal), waiting for the act delivery, the act phase (claim to commit)."""
    platform.set_llm_latency(0.0)
    [task_id] = platform.submit([steps_goal(steps, "latency")], max_steps=steps + 1)
    platform.wait_done(db, [task_id], timeout_s=60 + steps * 2)
    rows = [
        [float(v) for v in r]
        for r in db.rows(
            "SELECT extract(epoch FROM think_started_at), extract(epoch FROM proposed_at), "
            "extract(epoch FROM act_started_at), extract(epoch FROM committed_at) "
            "FROM steps WHERE task_id = %s AND status = 'completed' ORDER BY step_index",
            (task_id,),
        )
    ]
    intervals = [b[3] - a[3] for a, b in itertools.pairwise(rows)]
    parts: dict[str, list[float]] = {name: [] for name in PARTS}
    for prev, cur in itertools.pairwise(rows):
        for name, value in zip(
            PARTS, (cur[0] - prev[3], cur[1] - cur[0], cur[2] - cur[1], cur[3] - cur[2]), strict=True
        ):
            parts[name].append(value)
    return intervals, {name: percentile(v, 50) for name, v in parts.items()}


def latency_figure(
    steps: int, ours: list[float], parts: dict[str, float], floor: FloorResult | None, floor_note: str = ""
) -> Figure:
    title = f"per-step latency, 1 task x {steps} steps, LLM at once (p50 / p99)"
    goal = f"p50 <= {GOAL_FACTOR}x floor p50"
    p50, p99 = percentile(ours, 50), percentile(ours, 99)
    fig = Figure(KEY, title, measured=f"{ms(p50)} / {ms(p99)}", goal=goal)
    fig.values = {"p50_s": p50, "p99_s": p99, "intervals": len(ours), "median_parts_s": parts}
    breakdown = "median parts: " + ", ".join(f"{k} {ms(v)}" for k, v in parts.items())
    if floor is None or not floor.step_latencies_s:
        fig.reference = "n/a"
        fig.verdict = "n/a"
        fig.note = f"{breakdown}; floor not measured: {floor_note}"
        return fig
    f50, f99 = percentile(floor.step_latencies_s, 50), percentile(floor.step_latencies_s, 99)
    hops = floor.hops_per_step
    fig.reference = f"floor (raw Celery, {hops} hop{'s' if hops > 1 else ''}/step): {ms(f50)} / {ms(f99)}"
    o50 = percentile(floor.other_latencies_s, 50) if floor.other_latencies_s else None
    fig.values.update(floor_p50_s=f50, floor_p99_s=f99, ratio_p50=p50 / f50 if f50 else None,
                      floor_hops_per_step=hops, floor_other_hops_p50_s=o50)
    fig.verdict = judge(p50 <= GOAL_FACTOR * f50)
    other = f"; the {3 - hops}-hop floor: p50 {ms(o50)}" if o50 is not None else ""
    fig.note = (f"p50 is {p50 / f50:.1f}x the floor's; " if f50 else "") + breakdown + other
    return fig
