"""What the bench runs: the sizes of the issue's table (``FULL``) and tiny ones for the smoke test (``QUICK``)."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Params:
    # per-step latency: one task of this many steps, the LLM answering at once
    latency_steps: int = 50
    # raw Celery no-op tasks for the floor's tasks/s
    floor_noop_tasks: int = 3000
    # CPU and costs: K tasks of N steps, the LLM answering at once
    cpu_tasks: int = 50
    cpu_steps: int = 20
    cpu_rounds: int = 3  # the figure is the median round's: a round's window is a few seconds
    # steps/s with K concurrent tasks and LLM latency L
    throughput_ks: tuple[int, ...] = (50, 200, 500)
    llm_latency_s: float = 1.0
    throughput_warmup_s: float = 6.0
    throughput_window_s: float = 20.0
    # the submit API
    submit_clients: int = 32
    submit_duration_s: float = 8.0
    # think-worker RSS with this many agents waiting on a slow LLM
    memory_agents: int = 500
    memory_llm_latency_s: float = 20.0  # long enough that every agent is still waiting when sampled
    # the LangGraph peer: K tasks at the same L
    peer_tasks: int = 200
    # pg_stat_database is flushed by idle backends within 10 s; RabbitMQ samples its stats every 5 s
    stats_settle_s: float = 11.0
    # worker flags (None: the platform's defaults from Settings)
    think_concurrency: int | None = None
    act_concurrency: int | None = None
    # goals that depend on K: minimum fraction of K/L
    throughput_goals: tuple[tuple[int, float], ...] = ((200, 0.90), (500, 0.70))
    quick: bool = False

    def throughput_goal(self, k: int) -> float | None:
        return dict(self.throughput_goals).get(k)


FULL = Params()

QUICK = Params(
    latency_steps=6,
    floor_noop_tasks=200,
    cpu_tasks=4,
    cpu_steps=4,
    cpu_rounds=1,
    throughput_ks=(4,),
    llm_latency_s=0.3,
    throughput_warmup_s=1.0,
    throughput_window_s=2.0,
    submit_clients=4,
    submit_duration_s=1.0,
    memory_agents=8,
    memory_llm_latency_s=4.0,
    peer_tasks=4,
    stats_settle_s=1.0,
    quick=True,
)
