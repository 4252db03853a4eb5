"""``python -m bench.ledger_batch_micro``: the most that batching the ledger's statements across steps could save.

A think worker runs each step's three ledger statements (the claim, the proposal with the act phase taken on, the
commit: ``phase_sql.CLAIM_ALONE``, ``PROPOSE_ACTING_ALONE``, ``COMMIT_NEXT_ALONE``) one per round trip, each its own
transaction. A worker that gathered the statements of its steps running at the same moment could send them
together. This measures the bound of that saving: N tasks' steps are run in lock step, and each phase's N
statements are sent

* ``alone``: one per round trip and transaction, as the worker does today;
* ``batched``: all N in one round trip and one transaction (psycopg2 sends the ``EXECUTE``s as one query string,
  which PostgreSQL runs as one implicit transaction), in task order (the lock order such a batch would need).

Each side gets a fresh set of N tasks. This process's CPU and its PostgreSQL backend's CPU (``bench.procs``) are
divided by the steps. The batched side skips what a real batch would add (gathering the steps, waking them, one
result per statement: psycopg2 returns only the last one's rows, so this side reads none and checks at the end that
every step committed), so it is the saving's upper bound, not a design. A profiling aid, not a figure of ``make
bench``: nothing else runs, so there is no contention, and no broker or worker is involved.
"""

from __future__ import annotations

import argparse
import os
import time
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import text

from autogpt_workers.store import phase_sql
from autogpt_workers.store.db import Database
from autogpt_workers.store.ledger import FileRecord, Ledger, _commit_values, _lease_values, _proposal_values
from bench.env import DEFAULT_DATABASE_URL
from bench.ledger_micro import PROPOSAL
from bench.procs import cpu_seconds

TENANT = "bench-batch-micro"
FILES = [FileRecord("a.txt", 1, "ab" * 32)]

Batch = Sequence[tuple[phase_sql.PhaseStatement, Mapping[str, Any]]]


def _send(cursor: Any, statements: Batch, batched: bool) -> None:
    if batched:
        cursor.execute(";".join(cursor.mogrify(st.execute_sql, st.args(v)).decode() for st, v in statements))
        return
    for st, v in statements:
        cursor.execute(st.execute_sql, st.args(v))
        cursor.fetchall()


def _phases(tasks: Sequence[uuid.UUID], index: int) -> list[Batch]:
    """Step ``index`` of every task: the claim's, the proposal's and the commit's statements with their values."""
    now = datetime.now(UTC)
    tokens = {t: uuid.uuid4() for t in tasks}
    claim = [
        (
            phase_sql.CLAIM_ALONE["think"],
            {**_lease_values(t, index, "think", "bench", tokens[t], now, 60.0, index), "p_max_deliveries": 5},
        )
        for t in tasks
    ]
    propose = [
        (phase_sql.PROPOSE_ACTING_ALONE, {**_proposal_values(t, index, tokens[t], PROPOSAL), "p_expires": now})
        for t in tasks
    ]
    commit = [
        (phase_sql.COMMIT_NEXT_ALONE, _commit_values(t, index, tokens[t], "wrote a.txt", False, FILES)) for t in tasks
    ]
    return [claim, propose, commit]


def measure(url: str, tasks: int, steps: int, batched: bool) -> dict[str, float]:
    """``steps`` steps of ``tasks`` new tasks, in lock step; per step: wall time, this process's CPU, PostgreSQL's."""
    db = Database.from_url(url, pool_size=1, max_overflow=0, pre_ping=False)
    phase_sql.prepare_on_connect(db)
    ledger = Ledger(db)
    try:
        with db.transaction() as s:
            made = [
                ledger.create_task(s, {"tenant_id": TENANT, "goal": "batch micro", "budget": {"max_steps": steps + 5}})
                for _ in range(tasks)
            ]
        ids = sorted(m.task_id for m in made if m is not None)
        with db.autocommit() as conn:  # the pool's one connection, on which the statements were prepared
            raw = conn.connection.dbapi_connection
            assert raw is not None
            cursor = raw.cursor()
            pid = raw.get_backend_pid()
            cpu0, pg0, wall0 = time.process_time(), cpu_seconds(pid), time.perf_counter()
            for index in range(steps):
                for phase in _phases(ids, index):
                    _send(cursor, phase, batched)
            cpu1, pg1, wall1 = time.process_time(), cpu_seconds(pid), time.perf_counter()
            cursor.close()
        with db.transaction() as s:
            committed = s.scalar(
                text("SELECT count(*) FROM steps WHERE task_id = ANY(:ids) AND status = 'completed'"), {"ids": ids}
            )
            s.execute(text("DELETE FROM tasks WHERE tenant_id = :t"), {"t": TENANT})  # the micro keeps no task
    finally:
        db.dispose()
    total = len(ids) * steps
    if committed != total:
        raise RuntimeError(f"{committed} of {total} steps committed: the statements did not run as the ledger's")
    return {
        "wall_ms": (wall1 - wall0) / total * 1000,
        "client_cpu_ms": (cpu1 - cpu0) / total * 1000,
        "postgres_cpu_ms": (pg1 - pg0) / total * 1000,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", default=os.environ.get("AUTOGPT_BENCH_DATABASE_URL", DEFAULT_DATABASE_URL))
    parser.add_argument("--tasks", type=int, default=8, help="steps per batch: the tasks run in lock step")
    parser.add_argument("--steps", type=int, default=200, help="steps of each task")
    parser.add_argument("--rounds", type=int, default=3, help="alternate alone and batched this many times")
    args = parser.parse_args(argv)
    if args.tasks < 1 or args.steps < 1 or args.rounds < 1:
        parser.error("--tasks, --steps and --rounds are at least 1")
    print(
        f"{args.tasks} tasks x {args.steps} steps\n"
        "| statements | wall ms/step | this process's CPU ms/step | PostgreSQL CPU ms/step |\n|---|---|---|---|"
    )
    for _ in range(args.rounds):
        for batched in (False, True):
            r = measure(args.database_url, args.tasks, args.steps, batched)
            mode = f"{args.tasks} per round trip" if batched else "one per round trip"
            print(f"| {mode} | {r['wall_ms']:.3f} | {r['client_cpu_ms']:.3f} | {r['postgres_cpu_ms']:.3f} |")


if __name__ == "__main__":
    main()
