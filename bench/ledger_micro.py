"""``python -m bench.ledger_micro``: what one step's ledger transactions cost, in one thread, without the broker.

A task's steps are run through the ledger as a think worker runs an inline step (claim, propose with the act phase
taken on, commit with one artifact, the wake-up marked published), and the worker's CPU (this process) and its
PostgreSQL backend's CPU (``bench.procs.cpu_seconds``) are divided by the steps. With ``--mode both`` the same is
done with the phase statements as text and as server-side prepared statements, back to back. A profiling aid for the
ledger, not a figure of ``make bench``: nothing else runs, so there is no contention and no broker.
"""

from __future__ import annotations

import argparse
import os
import time

from sqlalchemy import text

from autogpt_workers.store import phase_sql
from autogpt_workers.store.db import Database
from autogpt_workers.store.ledger import FileRecord, Ledger
from bench.env import DEFAULT_DATABASE_URL
from bench.procs import cpu_seconds

PROPOSAL = {
    "command": "write_file",
    "arguments": {"path": "a.txt", "content": "x"},
    "model": "m",
    "usage": {"prompt_tokens": 10, "completion_tokens": 5},
    "cost_usd": 0.0,
    "assistant_message": {"content": "writing"},
}


def measure(url: str, steps: int, prepared: bool) -> dict[str, float]:
    db = Database.from_url(url, pool_size=1, max_overflow=0, pre_ping=False)
    if prepared:
        phase_sql.prepare_on_connect(db)
    ledger = Ledger(db)
    try:
        with db.session() as s:  # the pool's one connection: every statement below runs on this backend
            pid = int(s.execute(text("SELECT pg_backend_pid()")).scalar_one())
        with db.transaction() as s:
            created = ledger.create_task(s, {"goal": "ledger micro", "budget": {"max_steps": steps + 5}})
        assert created is not None
        task_id = created.task_id
        files = [FileRecord("a.txt", 1, "ab" * 32)]
        cpu0, pg0, wall0 = time.process_time(), cpu_seconds(pid), time.perf_counter()
        for index in range(steps):
            claim = ledger.claim(task_id, index, "think", "bench", 60.0, 5, history_from=index)
            assert claim.token is not None, claim
            ledger.propose(task_id, index, claim.token, PROPOSAL, act_lease_ttl_s=60.0)
            committed, wakeup = ledger.commit_step(task_id, index, claim.token, "wrote a.txt", False, False, files)
            assert committed and wakeup is not None
            ledger.mark_published([wakeup.outbox_id])
        cpu1, pg1, wall1 = time.process_time(), cpu_seconds(pid), time.perf_counter()
    finally:
        db.dispose()
    return {
        "wall_ms": (wall1 - wall0) / steps * 1000,
        "worker_cpu_ms": (cpu1 - cpu0) / steps * 1000,
        "postgres_cpu_ms": (pg1 - pg0) / steps * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", default=os.environ.get("AUTOGPT_BENCH_DATABASE_URL", DEFAULT_DATABASE_URL))
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--mode", choices=("text", "prepared", "both"), default="both")
    parser.add_argument("--rounds", type=int, default=2, help="alternate the modes this many times")
    args = parser.parse_args()
    modes = ["text", "prepared"] if args.mode == "both" else [args.mode]
    print("| mode | wall ms/step | worker CPU ms/step | PostgreSQL CPU ms/step |\n|---|---|---|---|")
    for _ in range(args.rounds):
        for mode in modes:
            r = measure(args.database_url, args.steps, prepared=mode == "prepared")
            print(f"| {mode} | {r['wall_ms']:.2f} | {r['worker_cpu_ms']:.2f} | {r['postgres_cpu_ms']:.2f} |")


if __name__ == "__main__":
    main()
