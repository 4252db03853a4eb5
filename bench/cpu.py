"""CPU per step and steps/s with the LLM answering at once (K tasks), and what each step costs PostgreSQL and
the broker, from one run.

Sequence: the K tasks are submitted while no worker runs; after the statistics settle (idle PostgreSQL backends
flush their counters within 10 s, RabbitMQ samples every 5 s) the counters are read, fresh workers drain the
tasks, and after another settle the counters are read again. So the deltas hold the workers' and the reaper's
work on these steps (start-up included) and none of the submissions'. The harness's own SQL is subtracted, and
the commit PostgreSQL counts for each connection opened (its backend's start-up) is reported apart.

CPU is utime + stime from /proc of every platform process (API, think worker, act worker and its children,
reaper), counted from 20% of the steps committed to 90%, so the workers' start-up and the tail are left out. A fresh
worker is still starting up after its first committed step: its pools open their connections (20 PostgreSQL
connections a think process, each preparing the phase statements; the LLM clients' keep-alive connections; the
publisher's broker connections) and its thread pool starts its threads as the first deliveries arrive, and every task
pays for its first step (its workspace, its history read whole). The figure used to open its window at the first
committed step; it is still measured that way, beside it (``cold_*`` in ``results.json``, and the note).

The window is a few seconds, so ``make bench`` runs the whole sequence ``Params.cpu_rounds`` times and reports the
median round (``cpu_figure``), every round's figures beside it; the costs figure is that round's.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

from bench.env import BenchEnv, Sql, xact_counts
from bench.figure import Figure, judge, ms
from bench.floor import FloorResult
from bench.procs import CpuMeter, cpu_seconds, wait_until
from bench.rabbit import PublishCounts
from bench.stack import Platform, steps_goal

CPU_KEY = "cpu"
COSTS_KEY = "costs"
GOAL_STEPS_PER_S = 300.0
GOAL_XACTS = 3.0
GOAL_MESSAGES = 2.0
TASK_EXCHANGES = ("", "autogpt")  # wake-ups go through the default exchange or the platform's
MAX_WINDOW_S = 120.0
WARM_FRACTION = 0.2  # the window opens once this share of the steps has committed (each task a few steps in)
HELD = "SELECT count(*) FROM steps WHERE status IN ('thinking', 'acting')"


@dataclasses.dataclass
class CpuResult:
    tasks: int
    steps_total: int  # steps committed by the end (all of them, unless the run was too slow and cut short)
    window_steps: int
    window_s: float
    platform_cpu_s: float
    by_process_cpu_s: dict[str, float]
    infra_cpu_s: dict[str, float]
    host_busy: float
    commits: int  # PostgreSQL's counter, less the harness's own statements
    rollbacks: int
    sessions: int  # connections opened in the window: each counts one commit, its backend's start-up
    harness_statements: int
    published: PublishCounts
    settled: bool  # False: counters read before PostgreSQL and RabbitMQ flushed them (quick mode): rough
    # the same, from the first committed step (the window as it was measured before the twelfth session)
    cold_window_steps: int = 0
    cold_window_s: float = 0.0
    cold_platform_cpu_s: float = 0.0

    @property
    def steps_per_s(self) -> float:
        return self.window_steps / self.window_s if self.window_s > 0 else 0.0

    @property
    def cpu_per_step_s(self) -> float:
        return self.platform_cpu_s / self.window_steps if self.window_steps else float("nan")


def _beam_pids() -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if Path(f"/proc/{entry}/comm").read_text().strip() == "beam.smp":
                    pids.append(int(entry))
            except OSError:
                continue
    return pids


class InfraMeter:
    """CPU of what serves the platform: its PostgreSQL backends, the RabbitMQ node (all vhosts), the fake LLM."""

    def __init__(self, db: Sql, database: str, llm_pid: int, count_new: bool = False) -> None:
        """``count_new``: a process that started after ``start`` counts from zero (else only those alive at both
        ends count). Either way a backend that came and went between the two readings is not seen."""
        self.db, self.database, self.llm_pid, self.count_new = db, database, llm_pid, count_new
        self.before: dict[str, dict[int, float]] = {}

    def _pids(self) -> dict[str, list[int]]:
        pg = [int(r[0]) for r in self.db.rows("SELECT pid FROM pg_stat_activity WHERE datname = %s", (self.database,))]
        return {"postgres": pg, "rabbitmq": _beam_pids(), "fake_llm": [self.llm_pid]}

    def start(self) -> None:
        self.before = {k: {p: cpu_seconds(p) for p in pids} for k, pids in self._pids().items()}

    def stop(self) -> dict[str, float]:
        out = {}
        for name, pids in self._pids().items():
            before = self.before.get(name, {})
            out[name] = sum(cpu_seconds(p) - before.get(p, 0.0) for p in pids if self.count_new or p in before)
        return out


def _completed(db: Sql) -> int:
    return int(db.scalar("SELECT count(*) FROM steps WHERE status = 'completed'"))


def measure_cpu(
    platform: Platform, env: BenchEnv, db: Sql, tasks: int, steps: int, settle_s: float,
    think_concurrency: int | None, act_concurrency: int | None, restart: bool = True,
) -> CpuResult:  # fmt: skip
    """``restart=False`` (quick mode): keep the running workers and skip the settling; the counts are rough."""
    platform.set_llm_latency(0.0)
    total = tasks * steps
    goals = [steps_goal(steps, "cpu")] * tasks
    if restart:
        platform.stop_workers()
        ids = platform.submit(goals, max_steps=steps + 1)
        time.sleep(settle_s)
        x0, p0, s0 = xact_counts(env.database_url, env.database), env.mgmt.publish_counts(), db.statements
        platform.start_workers(think_concurrency, act_concurrency)
    else:
        if not platform.workers:
            platform.start_workers(think_concurrency, act_concurrency)
        x0, p0, s0 = xact_counts(env.database_url, env.database), env.mgmt.publish_counts(), db.statements
        ids = platform.submit(goals, max_steps=steps + 1)
    deadline = time.monotonic() + 120
    while _completed(db) == 0:
        platform.check_workers()
        if time.monotonic() > deadline:
            raise TimeoutError("no step committed within 120 s of the workers' start")
        time.sleep(0.02)
    assert platform.fake is not None
    cold = CpuMeter(_named_sessions(platform).values()).start()
    cold_c0, cold_t0 = _completed(db), time.perf_counter()
    warm_at = int(total * WARM_FRACTION) if restart else 0  # quick mode: a handful of steps, one window
    while _completed(db) < max(cold_c0, warm_at):
        platform.check_workers()
        if time.perf_counter() - cold_t0 > MAX_WINDOW_S:
            raise TimeoutError(f"{WARM_FRACTION:.0%} of the steps not committed in {MAX_WINDOW_S:.0f} s")
        time.sleep(0.02)
    infra = InfraMeter(db, env.database, platform.fake.process.pid)
    infra.start()
    meters = {name: CpuMeter([pid]).start() for name, pid in _named_sessions(platform).items()}
    host = CpuMeter([]).start()
    c0, t0 = _completed(db), time.perf_counter()
    # the window ends at 90% of the steps, or after MAX_WINDOW_S on a machine too slow for that
    while (c1 := _completed(db)) < min(total, max(c0 + 1, int(total * 0.9))):
        platform.check_workers()
        if time.perf_counter() - t0 > MAX_WINDOW_S and c1 > c0:
            break
        if time.perf_counter() - t0 > 3 * MAX_WINDOW_S:
            raise TimeoutError(f"no step committed in {3 * MAX_WINDOW_S:.0f} s")
        time.sleep(0.05)
    t1 = time.perf_counter()
    by_process = {name: m.stop() for name, m in meters.items()}
    cold.stop()
    host.stop()
    infra_cpu = infra.stop()
    try:
        platform.wait_done(db, ids, timeout_s=MAX_WINDOW_S / 4)
    except TimeoutError:  # too slow to finish: the costs are per step committed, the rest is cancelled
        env.cancel_open_tasks(db)
        wait_until(lambda: not db.scalar(HELD), 60, 0.25, "the steps in flight")
    done = int(db.scalar("SELECT count(*) FROM steps WHERE status = 'completed'"))
    s1 = db.statements
    db.close()  # its backend exits and flushes its counters
    time.sleep(settle_s)
    x1, p1 = xact_counts(env.database_url, env.database), env.mgmt.publish_counts()
    env.settle(db)
    settled = restart and settle_s >= 10  # else the counts are rough (quick mode): computed, flagged in the note
    return CpuResult(
        tasks=tasks,
        steps_total=done,
        window_steps=c1 - c0,
        window_s=t1 - t0,
        platform_cpu_s=sum(by_process.values()),
        by_process_cpu_s=by_process,
        infra_cpu_s=infra_cpu,
        host_busy=host.host_busy,
        commits=(x1.commits - x0.commits) - (s1 - s0),
        rollbacks=x1.rollbacks - x0.rollbacks,
        sessions=x1.sessions - x0.sessions,
        harness_statements=s1 - s0,
        published=p1.minus(p0),
        settled=settled,
        cold_window_steps=c1 - cold_c0,
        cold_window_s=t1 - cold_t0,
        cold_platform_cpu_s=cold.seconds,
    )


def _named_sessions(platform: Platform) -> dict[str, int]:
    named = {name: proc.pid for name, proc in platform.workers.items() if proc.alive()}
    if platform.api is not None and platform.api.alive():
        named["api"] = platform.api.pid
    return named


def median_round(rounds: list[CpuResult]) -> CpuResult:
    """The round whose steps/s is the median (the lower middle one of an even count)."""
    ranked = sorted(rounds, key=lambda r: r.steps_per_s)
    return ranked[(len(ranked) - 1) // 2]


def cpu_figure(rounds: list[CpuResult], floor: FloorResult | None, floor_note: str = "") -> Figure:
    """The median of ``rounds`` (each a fresh set of K tasks drained by fresh workers: a window of a few seconds,
    which one hiccup of a shared host moves by a tenth or more), with every round's figures beside it."""
    r = median_round(rounds)
    title = f"CPU per step (all platform processes) and steps/s, K = {r.tasks}, LLM at once"
    fig = Figure(CPU_KEY, title, goal=f">= {GOAL_STEPS_PER_S:.0f} steps/s")
    fig.measured = f"{r.steps_per_s:.0f} steps/s, {ms(r.cpu_per_step_s)} CPU/step"
    fig.verdict = judge(r.steps_per_s >= GOAL_STEPS_PER_S)
    per_step = {k: v / r.window_steps for k, v in r.by_process_cpu_s.items()} if r.window_steps else {}
    infra = {k: v / r.window_steps for k, v in r.infra_cpu_s.items()} if r.window_steps else {}
    fig.values = {
        "steps_per_s": r.steps_per_s,
        "cpu_per_step_s": r.cpu_per_step_s,
        "cpu_per_step_by_process_s": per_step,
        "infra_cpu_per_step_s": infra,
        "host_busy": r.host_busy,
        "window_steps": r.window_steps,
        "window_s": r.window_s,
        "cold_steps_per_s": r.cold_window_steps / r.cold_window_s if r.cold_window_s > 0 else 0.0,
        "cold_cpu_per_step_s": r.cold_platform_cpu_s / r.cold_window_steps if r.cold_window_steps else float("nan"),
        "cold_window_steps": r.cold_window_steps,
        "rounds_steps_per_s": [x.steps_per_s for x in rounds],
        "rounds_cpu_per_step_s": [x.cpu_per_step_s for x in rounds],
    }
    fig.note = (
        (f"median of {len(rounds)} rounds (steps/s: {', '.join(f'{x.steps_per_s:.0f}' for x in rounds)}; CPU/step: "
         f"{', '.join(ms(x.cpu_per_step_s) for x in rounds)}); " if len(rounds) > 1 else "")
        + "per step: " + ", ".join(f"{k} {v * 1000:.1f} ms" for k, v in per_step.items())
        + "; serving it: " + ", ".join(f"{k} {v * 1000:.1f} ms" for k, v in infra.items())
        + f"; host busy {r.host_busy:.0%} of 2 cores"
    )  # fmt: skip
    if r.cold_window_steps > r.window_steps:  # the window opened after the first committed step (not --quick)
        fig.note += (
            f"; window from {WARM_FRACTION:.0%} to 90% of the steps; from the first committed step: "
            f"{fig.values['cold_steps_per_s']:.0f} steps/s, {ms(fig.values['cold_cpu_per_step_s'])} CPU/step"
        )
    if floor is None or floor.noop_elapsed_s <= 0:
        fig.reference = "n/a"
        fig.note += f"; floor not measured: {floor_note}"
        return fig
    noop_cpu = floor.noop_cpu_s / floor.noop_tasks if floor.noop_tasks else float("nan")
    fig.reference = f"raw Celery no-op: {floor.noop_rate:.0f} tasks/s, {ms(noop_cpu)} CPU/task"
    fig.values.update(floor_noop_tasks_per_s=floor.noop_rate, floor_noop_cpu_per_task_s=noop_cpu)
    return fig


def costs_figure(r: CpuResult) -> Figure:
    """Commits per step: PostgreSQL's ``xact_commit`` over the window (the steps, and the periodic rounds that ran
    meanwhile), less the harness's own statements and less one per connection opened in the window. PostgreSQL
    counts a commit for each new backend, its start-up read of the catalogs, with no statement of ours (10
    connections opened and closed: +10 ``xact_commit``, +10 ``sessions``); that is a cost per connection, paid
    when a worker's pool fills, not per step, and is reported beside the figure."""
    title = f"PostgreSQL transactions and broker messages per step (K = {r.tasks}, {r.steps_total} steps)"
    goal = f"<= {GOAL_XACTS:.0f} transactions and {GOAL_MESSAGES:.0f} messages"
    fig = Figure(COSTS_KEY, title, goal=goal, reference="-")
    n = r.steps_total
    counted, startups, rollbacks = r.commits / n, r.sessions / n, r.rollbacks / n
    commits = counted - startups
    tasks_msgs = sum(r.published.by_exchange.get(x, 0) for x in TASK_EXCHANGES) / n
    events = r.published.by_exchange.get("celeryev", 0) / n
    total = r.published.total / n
    fig.measured = (
        f"{commits:.2f} commits (+{startups:.2f} connection start-ups, +{rollbacks:.2f} read-only), "
        f"{total:.2f} messages"
    )
    fig.verdict = judge(commits <= GOAL_XACTS and total <= GOAL_MESSAGES)
    fig.values = {
        "commits_per_step": commits,
        "counted_commits_per_step": counted,  # PostgreSQL's counter as read, start-ups included
        "connection_startups_per_step": startups,
        "connections_opened": r.sessions,
        "rollbacks_per_step": rollbacks,
        "messages_per_step": total,
        "task_messages_per_step": tasks_msgs,
        "event_messages_per_step": events,
        "published_by_exchange": r.published.by_exchange,
        "harness_statements_subtracted": r.harness_statements,
    }
    fig.note = (
        f"messages: {tasks_msgs:.2f} wake-ups + {events:.2f} Celery task events (celeryev) per step; "
        f"PostgreSQL's counter read {counted:.2f} commits per step, of which {startups:.2f} are the start-ups of the "
        f"{r.sessions} connections opened in the window (one commit each, no statement of ours); "
        "read-only = transactions ended by ROLLBACK (SQLAlchemy read sessions, statements prepared on a new connection)"
    )
    if not r.settled:
        fig.note += "; ROUGH: counters read before they were flushed (quick mode)"
    return fig
