"""Think-worker memory: RSS of the think worker processes (one per core, together) with N agents waiting on a slow
LLM, against their RSS idle (fresh workers after one warm-up task). Per agent = (RSS loaded - RSS idle) / agents
in flight, where in flight means a step in its think phase (claimed by a worker, waiting on the LLM)."""

from __future__ import annotations

import dataclasses
import time

from bench.env import Sql
from bench.figure import Figure, judge
from bench.stack import Platform, steps_goal

KEY = "worker_memory"
GOAL_MB_PER_AGENT = 2.0
MB = 1024 * 1024


@dataclasses.dataclass
class MemoryResult:
    agents: int
    idle_rss: int
    loaded_rss: int  # at the sample with the most agents in flight
    peak_rss: int
    in_flight: int
    think_concurrency: int

    @property
    def per_agent(self) -> float:
        return (self.loaded_rss - self.idle_rss) / self.in_flight if self.in_flight else float("nan")


def measure_memory(
    platform: Platform, db: Sql, agents: int, llm_latency_s: float, think_concurrency: int
) -> MemoryResult:
    """Submit the agents, then sample until as many are in flight as can be (all, or the think concurrency) or
    the count stops rising. The caller stops the workers afterwards (the LLM would keep them waiting)."""
    thinkers = platform.think_workers()

    def rss_bytes() -> int:  # the think processes together (one per core)
        return sum(w.rss_bytes() for w in thinkers)

    idle = rss_bytes()
    platform.set_llm_latency(llm_latency_s)
    platform.submit([steps_goal(2, "memory")] * agents, max_steps=3)
    submitted = time.monotonic()
    target = min(agents, think_concurrency)
    best, best_rss, peak, rose_at = 0, idle, idle, submitted
    while time.monotonic() - submitted < llm_latency_s - 1.0:
        platform.check_workers()
        in_flight = int(db.scalar("SELECT count(*) FROM steps WHERE status = 'thinking'"))
        rss = rss_bytes()
        peak = max(peak, rss)
        if in_flight > best:
            best, best_rss, rose_at = in_flight, rss, time.monotonic()
        elif in_flight == best:
            best_rss = max(best_rss, rss)
        if best >= target and time.monotonic() - rose_at > 1.0:
            break  # all that can be in flight are, and their RSS was sampled for a second
        if time.monotonic() - rose_at > 3.0:
            break  # the count stopped rising below the target
        time.sleep(0.2)
    return MemoryResult(agents, idle, best_rss, peak, best, think_concurrency)


def memory_figure(r: MemoryResult) -> Figure:
    title = f"think workers' RSS with {r.agents} agents in flight (LLM slow)"
    fig = Figure(KEY, title, goal=f"< {GOAL_MB_PER_AGENT:g} MB per in-flight agent")
    fig.reference = f"RSS idle {r.idle_rss / MB:.0f} MB"
    fig.measured = f"{r.loaded_rss / MB:.0f} MB, {r.per_agent / MB:.2f} MB/agent ({r.in_flight} in flight)"
    fig.verdict = judge(r.per_agent / MB < GOAL_MB_PER_AGENT) if r.in_flight else "n/a"
    fig.values = {
        "idle_rss_bytes": r.idle_rss,
        "loaded_rss_bytes": r.loaded_rss,
        "peak_rss_bytes": r.peak_rss,
        "in_flight": r.in_flight,
        "per_agent_bytes": r.per_agent,
        "think_concurrency": r.think_concurrency,
    }
    if r.in_flight < r.agents:
        fig.note = (
            f"only {r.in_flight} of {r.agents} agents reached the worker (think concurrency "
            f"{r.think_concurrency}); the rest waited in the queue, costing the worker nothing"
        )
    return fig
