"""``python -m bench.submit_micro``: what a submit's statement costs, in one thread, without the broker or HTTP.

Tasks are written as the API's submit writes a new task of a tenant without a cap (``Ledger.create_task_alone``,
one statement in autocommit), and this process's CPU and its PostgreSQL backend's CPU are divided by the tasks.
``--mode both`` does it with the statement as text and as a server-side prepared statement (the API's engine,
``phase_sql.prepare_submit_on_connect``), alternately. A profiling aid for the submit, not a figure of ``make
bench``: nothing else runs, so there is no contention.
"""

from __future__ import annotations

import argparse
import os
import time

from sqlalchemy import text

from autogpt_workers.store import phase_sql, submit_sql
from autogpt_workers.store.db import Database
from autogpt_workers.store.ledger import Ledger
from bench.env import DEFAULT_DATABASE_URL
from bench.procs import cpu_seconds

# what ``submit.submit_task`` passes for ``{"goal": ..., "budget": {"max_steps": 2}}`` from the bench's tenant
VALUES = {
    "tenant_id": "bench-micro",
    "goal": "submit micro: write a file, then finish",
    "priority": 5,
    "budget": {"max_steps": 2, "max_cost_usd": None, "max_tokens": None},
    "allowed_commands": None,
    "metadata_": {},
    "idempotency_key": None,
    "request_hash": "0" * 64,
    "model": "scripted-demo",
    "approval": "never",
    "deadline": None,
    "traceparent": None,
}
OPTIONS = {
    "source": "native",
    "base_priority": 5,
    "profile": None,
    "webhook_url": None,
    "webhook_events": ["task.completed", "task.failed", "task.cancelled"],
    "additional_input": None,
}


def measure(url: str, tasks: int, prepared: bool) -> dict[str, float]:
    db = Database.from_url(url, pool_size=1, max_overflow=0, pre_ping=False)
    if prepared:
        phase_sql.prepare_submit_on_connect(db, submit_sql.SUBMIT_STATEMENTS)
    ledger = Ledger(db)
    try:
        with db.session() as s:  # the pool's one connection: every statement below runs on this backend
            pid = int(s.execute(text("SELECT pg_backend_pid()")).scalar_one())
        for _ in range(20):  # past PostgreSQL's first custom plans of a prepared statement
            ledger.create_task_alone(VALUES, options=OPTIONS)
        cpu0, pg0, wall0 = time.process_time(), cpu_seconds(pid), time.perf_counter()
        for _ in range(tasks):
            assert ledger.create_task_alone(VALUES, options=OPTIONS) is not None
        cpu1, pg1, wall1 = time.process_time(), cpu_seconds(pid), time.perf_counter()
        with db.transaction() as s:  # the bench's database keeps no micro tasks
            s.execute(text("DELETE FROM tasks WHERE tenant_id = :t"), {"t": VALUES["tenant_id"]})
    finally:
        db.dispose()
    return {
        "wall_ms": (wall1 - wall0) / tasks * 1000,
        "api_cpu_ms": (cpu1 - cpu0) / tasks * 1000,
        "postgres_cpu_ms": (pg1 - pg0) / tasks * 1000,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", default=os.environ.get("AUTOGPT_BENCH_DATABASE_URL", DEFAULT_DATABASE_URL))
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--mode", choices=("text", "prepared", "both"), default="both")
    parser.add_argument("--rounds", type=int, default=2, help="alternate the modes this many times")
    args = parser.parse_args(argv)
    modes = ["text", "prepared"] if args.mode == "both" else [args.mode]
    print("| mode | wall ms/task | this process's CPU ms/task | PostgreSQL CPU ms/task |\n|---|---|---|---|")
    for _ in range(args.rounds):
        for mode in modes:
            r = measure(args.database_url, args.tasks, prepared=mode == "prepared")
            print(f"| {mode} | {r['wall_ms']:.3f} | {r['api_cpu_ms']:.3f} | {r['postgres_cpu_ms']:.3f} |")


if __name__ == "__main__":
    main()
