"""The submit API: tasks accepted per second with N concurrent keep-alive clients, and their latency, against
the same server's health endpoint. No worker runs meanwhile (the accepted tasks wait in the queue and are purged
afterwards), so the figure is the API's own, with PostgreSQL and RabbitMQ behind it."""

from __future__ import annotations

import dataclasses
import threading
from typing import Any

import httpx

from bench import httpload
from bench.cpu import InfraMeter
from bench.env import BenchEnv, Sql
from bench.figure import Figure, judge, ms, percentile
from bench.procs import CpuMeter, session_pids
from bench.stack import Platform, steps_goal

KEY = "submit_api"
GOAL_RATE = 500.0
GOAL_P99_S = 0.050


@dataclasses.dataclass
class SubmitResult:
    clients: int
    health: httpload.LoadResult
    submit: httpload.LoadResult
    api_cpu_s: float
    infra_cpu_s: dict[str, float] = dataclasses.field(default_factory=dict)  # PostgreSQL's backends, RabbitMQ
    host_busy: float = float("nan")  # share of both cores busy during the submits (anyone's work)
    per_statement: float = float("nan")  # submits per statement of the API's group commit (its /metrics)
    # per API process, busiest first: (client connections it served, its 2xx answers' p50, p99); the kernel spreads
    # the connections over the processes by their addresses' hash, so a run's split varies, and its p99 with it
    by_process: list[tuple[int, float, float]] = dataclasses.field(default_factory=list)


def split_by_process(result: httpload.LoadResult, served_by: dict[int, int]) -> list[tuple[int, float, float]]:
    """``SubmitResult.by_process`` from a load's clients and ``httpload.server_connections`` read during it."""
    groups: dict[int, list[list[float]]] = {}
    for port, latencies in result.clients:
        pid = served_by.get(port) if port is not None else None
        if pid is not None:
            groups.setdefault(pid, []).append(latencies)
    rows = []
    for lists in groups.values():
        values = [v for latencies in lists for v in latencies]
        rows.append((len(lists), percentile(values, 50), percentile(values, 99)))
    return sorted(rows, reverse=True)


def batch_totals(api_url: str) -> tuple[float, float]:
    """``autogpt_api_submit_batch_size``'s sum and count from the API's ``/metrics`` (all its processes); zeros for a
    platform without it."""
    sums = {"autogpt_api_submit_batch_size_sum": 0.0, "autogpt_api_submit_batch_size_count": 0.0}
    try:
        text = httpx.get(f"{api_url}/metrics", timeout=10).text
    except httpx.HTTPError:
        return 0.0, 0.0
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in sums:
            sums[name] += float(value)
    return sums["autogpt_api_submit_batch_size_sum"], sums["autogpt_api_submit_batch_size_count"]


def measure_submit(
    platform: Platform, env: BenchEnv, db: Sql, clients: int, duration_s: float, keep_workers: bool = False
) -> SubmitResult:
    """``keep_workers`` (quick mode) leaves running workers alone: they then compete with the API for the CPU."""
    if not keep_workers:
        platform.stop_workers()
    body = {"goal": steps_goal(1, "submit"), "budget": {"max_steps": 2}}
    url, headers = platform.api_url, platform.api_headers

    def health(_: int) -> tuple[str, str, None]:
        return ("GET", "/healthz", None)

    def submit(_: int) -> tuple[str, str, Any]:
        return ("POST", "/v1/tasks", body)

    # warm-up: connections, the API's thread pool and its database pool
    httpload.load(url, submit, clients, duration_s=min(1.0, duration_s), headers=headers)
    health_result = httpload.load(url, health, clients, duration_s=duration_s / 2, headers=headers)
    assert platform.api is not None and platform.fake is not None
    before = batch_totals(url)  # read outside the metered window
    meter = CpuMeter([platform.api.pid]).start()
    infra = InfraMeter(db, env.database, platform.fake.process.pid, count_new=True)
    infra.start()
    api_port, api_pid = int(url.rsplit(":", 1)[1]), platform.api.pid
    served_by: dict[int, int] = {}
    spy = threading.Timer(duration_s / 2, lambda: served_by.update(
        httpload.server_connections(api_port, [p for p in session_pids(api_pid) if p != api_pid])
    ))
    spy.start()
    submit_result = httpload.load(url, submit, clients, duration_s=duration_s, headers=headers)
    spy.cancel()
    meter.stop()
    infra_cpu = infra.stop()
    after = batch_totals(url)
    statements = after[1] - before[1]
    per_statement = (after[0] - before[0]) / statements if statements else float("nan")
    env.settle(db)
    return SubmitResult(
        clients, health_result, submit_result, meter.seconds, infra_cpu, meter.host_busy, per_statement,
        split_by_process(submit_result, served_by),
    )


def submit_figure(r: SubmitResult) -> Figure:
    title = f"submit API: tasks accepted/s, {r.clients} concurrent clients (p50 / p99)"
    fig = Figure(KEY, title, goal=f">= {GOAL_RATE:.0f} tasks/s, p99 < {GOAL_P99_S * 1000:.0f} ms")
    s, h = r.submit, r.health
    p50, p99 = percentile(s.latencies_s, 50), percentile(s.latencies_s, 99)
    h50, h99 = percentile(h.latencies_s, 50), percentile(h.latencies_s, 99)
    fig.measured = f"{s.rate:.0f} tasks/s, {ms(p50)} / {ms(p99)}"
    fig.reference = f"GET /healthz: {h.rate:.0f} req/s, {ms(h50)} / {ms(h99)}"
    fig.verdict = judge(s.rate >= GOAL_RATE and p99 < GOAL_P99_S) if s.ok else "n/a"
    cpu_per_task = r.api_cpu_s / s.ok if s.ok else float("nan")
    pg_per_task = r.infra_cpu_s.get("postgres", float("nan")) / s.ok if s.ok else float("nan")
    mq_per_task = r.infra_cpu_s.get("rabbitmq", float("nan")) / s.ok if s.ok else float("nan")
    fig.values = {
        "tasks_per_s": s.rate,
        "p50_s": p50,
        "p99_s": p99,
        "accepted": s.ok,
        "statuses": {str(k): v for k, v in s.statuses.items()},
        "errors": s.errors[:5],
        "health_rps": h.rate,
        "health_p50_s": h50,
        "health_p99_s": h99,
        "api_cpu_per_task_s": cpu_per_task,
        "postgres_cpu_per_task_s": pg_per_task,
        "rabbitmq_cpu_per_task_s": mq_per_task,
        "host_busy": r.host_busy,
        "submits_per_statement": r.per_statement,
        "connections_per_process": [n for n, _, _ in r.by_process],
        "p50_by_process_s": [p for _, p, _ in r.by_process],
        "p99_by_process_s": [p for _, _, p in r.by_process],
    }
    grouped = "" if r.per_statement != r.per_statement else f"; {r.per_statement:.1f} submits per statement"
    fig.note = (
        f"CPU per accepted task: API {cpu_per_task * 1000:.2f} ms, PostgreSQL {pg_per_task * 1000:.2f} ms, "
        f"RabbitMQ {mq_per_task * 1000:.2f} ms; both cores {r.host_busy:.0%} busy{grouped}"
    )
    if len(r.by_process) > 1:
        fig.note += "; client connections per API process " + " / ".join(
            f"{n} (p50 {ms(p50)}, p99 {ms(p99)})" for n, p50, p99 in r.by_process
        )
    if not s.ok:
        fig.note = f"no task accepted: {s.errors[:2]}"
    return fig
