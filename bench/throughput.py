"""Steps/s with K concurrent tasks while the LLM takes L seconds per answer, against the limit K/L.

No platform can beat K/L: each of the K tasks waits L seconds for every step's completion. Steps are counted
in a window after a warm-up (all K tasks submitted and their first steps under way); tasks have enough steps to
outlast the window, and are cancelled after it.
"""

from __future__ import annotations

import dataclasses
import math
import time

from bench.env import BenchEnv, Sql
from bench.figure import Figure, judge
from bench.procs import CpuMeter
from bench.stack import Platform, steps_goal


@dataclasses.dataclass
class ThroughputResult:
    tasks: int
    llm_latency_s: float
    window_steps: int
    window_s: float
    cpu_s: float
    host_busy: float
    in_flight_think: float  # mean number of steps in their think phase (holding a think slot) in the window
    timeline: list[tuple[float, int]]  # (seconds since submission, steps committed in that second)

    @property
    def steps_per_s(self) -> float:
        return self.window_steps / self.window_s if self.window_s > 0 else 0.0

    @property
    def limit(self) -> float:
        return self.tasks / self.llm_latency_s


def _completed(db: Sql) -> int:
    return int(db.scalar("SELECT count(*) FROM steps WHERE status = 'completed'"))


def measure_throughput(
    platform: Platform, env: BenchEnv, db: Sql, tasks: int, llm_latency_s: float, warmup_s: float, window_s: float
) -> ThroughputResult:
    steps = math.ceil((warmup_s + window_s) / llm_latency_s) + 5
    platform.set_llm_latency(llm_latency_s)
    submitted_at = time.time()
    platform.submit([steps_goal(steps, f"throughput K={tasks}")] * tasks, max_steps=steps + 1)
    time.sleep(max(0.0, warmup_s - (time.time() - submitted_at)))
    meter = CpuMeter(platform.sessions()).start()
    c0, t0 = _completed(db), time.perf_counter()
    samples = []
    while (elapsed := time.perf_counter() - t0) < window_s:
        platform.check_workers()
        samples.append(int(db.scalar("SELECT count(*) FROM steps WHERE status = 'thinking'")))
        time.sleep(min(0.5, max(0.0, window_s - elapsed)))
    c1, t1 = _completed(db), time.perf_counter()
    meter.stop()
    timeline = [
        (float(r[0]), int(r[1]))
        for r in db.rows(
            "SELECT floor(extract(epoch FROM committed_at) - %s) AS s, count(*) FROM steps "
            "WHERE status = 'completed' AND committed_at >= to_timestamp(%s) GROUP BY s ORDER BY s",
            (submitted_at, submitted_at),
        )
    ]
    env.settle(db)
    return ThroughputResult(
        tasks=tasks,
        llm_latency_s=llm_latency_s,
        window_steps=c1 - c0,
        window_s=t1 - t0,
        cpu_s=meter.seconds,
        host_busy=meter.host_busy,
        in_flight_think=sum(samples) / len(samples) if samples else 0.0,
        timeline=timeline,
    )


def throughput_figure(r: ThroughputResult, goal_fraction: float | None, think_concurrency: int) -> Figure:
    title = f"steps/s, K = {r.tasks} concurrent tasks, LLM latency L = {r.llm_latency_s:g} s"
    fig = Figure(f"throughput_k{r.tasks}", title)
    share = r.steps_per_s / r.limit if r.limit else 0.0
    fig.measured = f"{r.steps_per_s:.1f} steps/s ({share:.0%} of K/L)"
    fig.reference = f"limit K/L = {r.limit:.0f} steps/s"
    if goal_fraction is not None:
        fig.goal = f">= {goal_fraction:.0%} of K/L"
        fig.verdict = judge(share >= goal_fraction)
    else:
        fig.verdict = "-"
    cpu_per_step = r.cpu_s / r.window_steps if r.window_steps else float("nan")
    fig.values = {
        "tasks": r.tasks,
        "steps_per_s": r.steps_per_s,
        "limit": r.limit,
        "share_of_limit": share,
        "cpu_per_step_s": cpu_per_step,
        "host_busy": r.host_busy,
        "in_flight_think": r.in_flight_think,
        "think_concurrency": think_concurrency,
        "timeline": r.timeline,
    }
    fig.note = (
        f"{r.in_flight_think:.0f} steps in think on average (think concurrency {think_concurrency}); "
        f"platform CPU {cpu_per_step * 1000:.1f} ms/step; host busy {r.host_busy:.0%}"
    )
    return fig
