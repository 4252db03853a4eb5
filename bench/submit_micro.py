"""``python -m bench.submit_micro``: what a submit's statement costs, in one thread, without the broker or HTTP.

Tasks are written as the API's submit writes a new task of a tenant without a cap (``Ledger.create_task_alone``,
one statement in autocommit), and this process's CPU and its PostgreSQL backend's CPU are divided by the tasks.
``--mode both`` does it with the statement as text and as a server-side prepared statement (the API's engine,
``phase_sql.prepare_submit_on_connect``), alternately. A profiling aid for the submit, not a figure of ``make
bench``: nothing else runs, so there is no contention.

``--batch 8,32`` adds, in each round, B tasks at a time written by the API's group commit's statement
(``Ledger.create_tasks_alone``, ``submit_sql.CREATE_TASKS_ALONE``, prepared as the API prepares it): what a busy API
saves when its submits arriving together go in one statement.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

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


def _per_task(pid: int, write: Callable[[], None], calls: int, tasks_per_call: int = 1) -> dict[str, float]:
    """``write`` called ``calls`` times, each writing ``tasks_per_call`` tasks: wall time, this process's CPU and
    backend ``pid``'s CPU per task."""
    tasks = calls * tasks_per_call
    cpu0, pg0, wall0 = time.process_time(), cpu_seconds(pid), time.perf_counter()
    for _ in range(calls):
        write()
    cpu1, pg1, wall1 = time.process_time(), cpu_seconds(pid), time.perf_counter()
    return {
        "wall_ms": (wall1 - wall0) / tasks * 1000,
        "api_cpu_ms": (cpu1 - cpu0) / tasks * 1000,
        "postgres_cpu_ms": (pg1 - pg0) / tasks * 1000,
    }


def measure(url: str, tasks: int, prepared: bool, batch: int = 1) -> dict[str, float]:
    """The submit's statement on one connection: the one-task one (``Ledger.create_task_alone``), as text or
    prepared; with ``batch`` > 1, the group commit's for ``batch`` tasks at a time (``Ledger.create_tasks_alone``)."""
    db = Database.from_url(url, pool_size=1, max_overflow=0, pre_ping=False)
    if prepared:
        phase_sql.prepare_submit_on_connect(db, submit_sql.SUBMIT_STATEMENTS)
    ledger = Ledger(db)
    submits = [(VALUES, OPTIONS)] * batch
    try:
        with db.session() as s:  # the pool's one connection: every statement below runs on this backend
            pid = int(s.execute(text("SELECT pg_backend_pid()")).scalar_one())

        def write() -> None:
            if batch == 1:
                assert ledger.create_task_alone(VALUES, options=OPTIONS) is not None
            else:
                assert all(created is not None for created in ledger.create_tasks_alone(submits))

        for _ in range(20):  # past PostgreSQL's first custom plans of a prepared statement
            write()
        costs = _per_task(pid, write, calls=max(1, tasks // batch), tasks_per_call=batch)
        with db.transaction() as s:  # the bench's database keeps no micro tasks
            s.execute(text("DELETE FROM tasks WHERE tenant_id = :t"), {"t": VALUES["tenant_id"]})
    finally:
        db.dispose()
    return costs


def batch_sizes(value: str) -> list[int]:
    """``--batch``'s comma-separated sizes, each a whole number of at least 1."""
    try:
        sizes = [int(b) for b in value.split(",") if b.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"batch sizes are whole numbers separated by commas, not {value!r}") from None
    if any(b < 1 for b in sizes):
        raise argparse.ArgumentTypeError(f"a batch holds at least 1 task, not {value!r}")
    return sizes


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", default=os.environ.get("AUTOGPT_BENCH_DATABASE_URL", DEFAULT_DATABASE_URL))
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--mode", choices=("text", "prepared", "both"), default="both")
    parser.add_argument("--rounds", type=int, default=2, help="alternate the modes this many times")
    parser.add_argument(
        "--batch",
        type=batch_sizes,
        default=[],
        help="comma-separated batch sizes: also B tasks per statement of the API's group commit",
    )
    args = parser.parse_args(argv)
    modes = ["text", "prepared"] if args.mode == "both" else [args.mode]
    print("| mode | wall ms/task | this process's CPU ms/task | PostgreSQL CPU ms/task |\n|---|---|---|---|")
    for _ in range(args.rounds):
        for mode in modes:
            r = measure(args.database_url, args.tasks, prepared=mode == "prepared")
            print(f"| {mode} | {r['wall_ms']:.3f} | {r['api_cpu_ms']:.3f} | {r['postgres_cpu_ms']:.3f} |")
        for batch in args.batch:
            r = measure(args.database_url, args.tasks, prepared=True, batch=batch)
            cells = f"{r['wall_ms']:.3f} | {r['api_cpu_ms']:.3f} | {r['postgres_cpu_ms']:.3f}"
            print(f"| {batch} per statement | {cells} |")


if __name__ == "__main__":
    main()
