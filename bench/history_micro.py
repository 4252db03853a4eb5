"""``python -m bench.history_micro``: what the periodic queries cost as the history grows.

A running platform's lease heartbeat (``Ledger.renew``, every ``lease_heartbeat_s`` in every worker process), the
reaper's rounds (``reap_expired_leases``, ``rearm_orphans``, ``due_wakeups``) and the stuck-task detector (each
metrics scrape) look for the few steps in flight among every step ever run. This fills the bench database with
``--history`` finished steps (finished tasks of 100 steps, each with its published wake-up and its three events, as
the platform leaves them) beside ``--running`` running tasks with ``--running-steps`` finished steps each (their
wake-ups and events too) and a leased current step, then times each query (median of ``--rounds`` calls). A query
whose cost grows with the history rather than with the steps in flight shows here. Then the reaper's two prunes at
work: the history's wake-ups past the outbox's retention, deleted a batch at a time, and the history's tasks past
the task retention, deleted with all their rows (``Ledger.prune_finished_tasks``). The rows are removed at the end
(``--keep`` leaves them, to ``EXPLAIN`` the queries). A profiling aid, not a figure of ``make bench``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import uuid
from collections.abc import Callable

from sqlalchemy import text

from autogpt_workers.reaper import PRUNE_BATCH, RETIRE_BATCH
from autogpt_workers.store.db import Database
from autogpt_workers.store.ledger import Ledger
from autogpt_workers.stuck import find_stuck
from bench.env import DEFAULT_DATABASE_URL, REPO_ROOT, BenchEnv

GOAL = "history micro"
GOAL_RUNNING = "history micro, running"
STEPS_PER_TASK = 100
RETENTION_S = 7 * 86_400.0


def fill(db: Database, history: int, running: int, done: int, vacuum: bool) -> list[uuid.UUID]:
    """``history`` finished steps, and ``running`` running tasks of ``done`` finished steps and a leased one each;
    the leases' tokens."""
    tasks = max(1, history // STEPS_PER_TASK)
    with db.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO tasks (id, goal, status, budget, metadata, steps_completed, finished_at) "
                "SELECT gen_random_uuid(), :goal, 'completed', '{}', '{}', :n, now() FROM generate_series(1, :tasks)"
            ),
            {"goal": GOAL, "n": STEPS_PER_TASK, "tasks": tasks},
        )
        conn.execute(
            text(
                "INSERT INTO steps (task_id, step_index, status, proposal, output, committed_at, think_started_at, "
                "act_started_at) SELECT t.id, i, 'completed', '{\"command\": \"write_file\"}', 'wrote a.txt', "
                "now(), now(), now() FROM tasks t, generate_series(0, :n - 1) i WHERE t.goal = :goal"
            ),
            {"goal": GOAL, "n": STEPS_PER_TASK},
        )
        conn.execute(
            text(
                "INSERT INTO outbox (task_id, step_index, phase, priority, published_at) "
                "SELECT t.id, i, 'think', 5, now() FROM tasks t, generate_series(0, :n - 1) i WHERE t.goal = :goal"
            ),
            {"goal": GOAL, "n": STEPS_PER_TASK},
        )
        conn.execute(
            text(
                "INSERT INTO task_events (task_id, kind, step_index, data) "
                "SELECT t.id, k, i, '{}' FROM tasks t, generate_series(0, :n - 1) i, "
                "unnest(ARRAY['step.proposed', 'step.completed', 'artifact.written']) k WHERE t.goal = :goal"
            ),
            {"goal": GOAL, "n": STEPS_PER_TASK},
        )
        tokens = [uuid.uuid4() for _ in range(running)]
        conn.execute(
            text(
                "INSERT INTO tasks (id, goal, status, budget, metadata, steps_completed) "
                "SELECT gen_random_uuid(), :goal, 'running', '{}', '{}', :done FROM generate_series(1, :n)"
            ),
            {"goal": GOAL_RUNNING, "n": running, "done": done},
        )
        # each running task: ``done`` finished steps with their published wake-ups, then its current step, leased
        conn.execute(
            text(
                "INSERT INTO steps (task_id, step_index, status, proposal, output, committed_at, think_started_at, "
                "act_started_at) SELECT t.id, i, 'completed', '{\"command\": \"write_file\"}', 'wrote a.txt', "
                "now(), now(), now() FROM tasks t, generate_series(0, :done - 1) i WHERE t.goal = :goal"
            ),
            {"goal": GOAL_RUNNING, "done": done},
        )
        conn.execute(
            text(
                "INSERT INTO outbox (task_id, step_index, phase, priority, published_at, created_at) "
                "SELECT t.id, i, 'think', 5, now() - interval '1 minute', now() - interval '1 minute' "
                "FROM tasks t, generate_series(0, :done) i WHERE t.goal = :goal"
            ),
            {"goal": GOAL_RUNNING, "done": done},
        )
        conn.execute(
            text(
                "INSERT INTO task_events (task_id, kind, step_index, data) "
                "SELECT t.id, k, i, '{}' FROM tasks t, generate_series(0, :done - 1) i, "
                "unnest(ARRAY['step.proposed', 'step.completed', 'artifact.written']) k WHERE t.goal = :goal"
            ),
            {"goal": GOAL_RUNNING, "done": done},
        )
        conn.execute(
            text(
                "INSERT INTO steps (task_id, step_index, status, lease_owner, lease_token, lease_expires_at, "
                "think_started_at) SELECT t.id, :done, 'thinking', 'history-micro', tok, now() + interval '1 hour', "
                "now() FROM (SELECT id, row_number() OVER () AS n FROM tasks WHERE goal = :goal) t "
                "JOIN unnest(CAST(:tokens AS uuid[])) WITH ORDINALITY AS k(tok, n) ON k.n = t.n"
            ),
            {"goal": GOAL_RUNNING, "done": done, "tokens": tokens},
        )
    if vacuum:
        with db.engine.connect() as conn:
            conn = conn.execution_options(isolation_level="AUTOCOMMIT")
            conn.execute(text("VACUUM ANALYZE steps, outbox, tasks, task_events"))
    return tokens


def timed(call: Callable[[], object], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def drained(prune: Callable[[], int]) -> tuple[list[float], int, float]:
    """Call ``prune`` (rows deleted per call) until it deletes nothing, as the reaper's rounds would: each batch's
    seconds, the rows deleted, the seconds in all."""
    batches: list[float] = []
    deleted, t0 = 0, time.perf_counter()
    while True:
        b0 = time.perf_counter()
        n = prune()
        if not n:
            return batches, deleted, time.perf_counter() - t0
        batches.append(time.perf_counter() - b0)
        deleted += n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", default=os.environ.get("AUTOGPT_BENCH_DATABASE_URL", DEFAULT_DATABASE_URL))
    parser.add_argument("--history", type=int, default=300_000, help="finished steps already in the database")
    parser.add_argument("--running", type=int, default=200, help="running tasks, each with a leased step")
    parser.add_argument("--running-steps", type=int, default=100, help="finished steps of each running task")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--keep", action="store_true", help="leave the rows in place (to EXPLAIN the queries)")
    parser.add_argument("--no-vacuum", action="store_true", help="time the queries before autovacuum has run")
    args = parser.parse_args()
    # the bench's database and vhost, created and migrated if missing (as ``python -m bench`` does)
    BenchEnv.from_environ(args.database_url, None, None, REPO_ROOT / "var" / "bench").ensure_services()
    db = Database.from_url(args.database_url, pool_size=2, max_overflow=0, pre_ping=False)
    ledger = Ledger(db)
    try:
        t0 = time.perf_counter()
        tokens = fill(db, args.history, args.running, args.running_steps, not args.no_vacuum)
        print(f"filled {args.history} finished steps and {args.running} leased ones in {time.perf_counter() - t0:.1f}s")
        queries: dict[str, Callable[[], object]] = {
            "Ledger.renew (lease heartbeat)": lambda: ledger.renew(tokens, 3600.0),
            "Ledger.reap_expired_leases": ledger.reap_expired_leases,
            "Ledger.rearm_orphans": lambda: ledger.rearm_orphans(3600.0),
            "Ledger.due_wakeups": lambda: ledger.due_wakeups(3600.0),
            "stuck.find_stuck (each metrics scrape, the stuck view)": lambda: find_stuck(db, 600.0),
            "Ledger.prune_outbox (the reaper's), nothing past the retention": lambda: ledger.prune_outbox(
                3600.0, PRUNE_BATCH
            ),
            "Ledger.prune_finished_tasks (the reaper's), nothing past the retention": lambda: (
                ledger.prune_finished_tasks(RETENTION_S, RETIRE_BATCH)
            ),
        }
        sizes = f"{args.history} finished steps, {args.running} in flight, {args.running_steps} done each"
        print(f"| query ({sizes}) | ms per call, median of {args.rounds} |\n|---|---|")
        for name, call in queries.items():
            print(f"| {name} | {timed(call, args.rounds):.2f} |")
        # the history's wake-ups past the retention: what the reaper's prune then does, a batch at a time
        with db.engine.begin() as conn:
            conn.execute(
                text(
                    "UPDATE outbox SET published_at = now() - interval '2 hours' FROM tasks "
                    "WHERE tasks.id = outbox.task_id AND tasks.goal = :goal"
                ),
                {"goal": GOAL},
            )
        batches, deleted, elapsed = drained(lambda: ledger.prune_outbox(3600.0, PRUNE_BATCH))  # as the reaper calls it
        if batches:
            print(f"| Ledger.prune_outbox, {deleted} rows past the retention: batches of {PRUNE_BATCH:,} | "
                  f"{statistics.median(batches) * 1000:.0f} per batch, {deleted / elapsed:.0f} rows/s |")  # fmt: skip
        # the history's tasks past the task retention: what the reaper's round then deletes, a batch at a time
        with db.engine.begin() as conn:
            conn.execute(
                text("UPDATE tasks SET finished_at = now() - interval '30 days' WHERE goal = :goal"), {"goal": GOAL}
            )
        batches, deleted, elapsed = drained(lambda: len(ledger.prune_finished_tasks(RETENTION_S, RETIRE_BATCH)))
        if batches:
            print(f"| Ledger.prune_finished_tasks, {deleted} tasks of {STEPS_PER_TASK} steps past the retention: "
                  f"batches of {RETIRE_BATCH} | {statistics.median(batches) * 1000:.0f} per batch, "
                  f"{deleted / elapsed:.0f} tasks/s ({deleted * STEPS_PER_TASK / elapsed:.0f} steps/s) |")  # fmt: skip
    finally:
        with db.engine.begin() as conn:
            if not args.keep:
                conn.execute(text("DELETE FROM tasks WHERE goal IN (:a, :b)"), {"a": GOAL, "b": GOAL_RUNNING})
        db.dispose()


if __name__ == "__main__":
    main()
