"""``python -m bench.pool_micro``: what a single-statement transaction's connection costs the worker's CPU.

Runs ``SELECT 1`` in autocommit, one statement at a time, three ways, in rounds that rotate their order: ``pool``,
a connection checked out of SQLAlchemy's pool and back in around each statement (``Database.autocommit`` before
``kept_connections``); ``kept``, ``Database.autocommit`` as it is (the connection kept checked out between
statements); ``raw``, one DBAPI connection held for the whole run (the floor: the round trip and the driver alone).
Prints this process's CPU per statement (``time.process_time``). ``--gevent``: patched as a think worker is (gevent
and psycogreen, before anything else is imported), so the pool's locks and the driver's waits go through the hub.
A profiling aid, not a figure of ``make bench``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

MODES = ("pool", "kept", "raw")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.pool_micro", description=__doc__.splitlines()[0])
    p.add_argument("--database-url", default="postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")
    p.add_argument("--statements", type=int, default=2000, help="statements per mode per round (default 2000)")
    p.add_argument("--rounds", type=int, default=10, help="rounds (default 10)")
    p.add_argument("--gevent", action="store_true", help="patch for gevent first, as a think worker")
    args = p.parse_args(argv)
    if args.gevent:
        if "sqlalchemy" in sys.modules:
            p.error("--gevent must patch before SQLAlchemy is imported: run it as python -m bench.pool_micro")
        from autogpt_workers.green import patch

        patch()
    from autogpt_workers.store.db import Database

    db = Database.from_url(args.database_url, pool_size=4, max_overflow=0, pre_ping=False)
    held = db.engine.raw_connection()
    assert held.dbapi_connection is not None
    raw_connection = held.dbapi_connection
    raw_connection.autocommit = True

    def select(dbapi_connection: object) -> None:
        cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
        cursor.execute("SELECT 1")
        cursor.fetchall()
        cursor.close()

    def pool() -> None:
        with db.engine.connect() as connection:
            dbapi_connection = connection.connection.dbapi_connection
            assert dbapi_connection is not None
            dbapi_connection.autocommit = True
            select(dbapi_connection)
            dbapi_connection.autocommit = False

    def kept() -> None:
        with db.autocommit() as connection:
            select(connection.connection.dbapi_connection)

    runs: dict[str, Callable[[], None]] = {"pool": pool, "kept": kept, "raw": lambda: select(raw_connection)}
    per_statement: dict[str, list[float]] = {mode: [] for mode in MODES}
    for r in range(args.rounds):
        for mode in MODES[r % 3 :] + MODES[: r % 3]:
            run = runs[mode]
            for _ in range(max(1, args.statements // 20)):  # warm
                run()
            started = time.process_time()
            for _ in range(args.statements):
                run()
            per_statement[mode].append((time.process_time() - started) / args.statements * 1e6)
    held.close()
    db.dispose()
    where = "under gevent" if args.gevent else "in one thread"
    for mode, values in per_statement.items():
        print(f"{mode}: CPU per statement {where}, {args.rounds} rounds of {args.statements}: median "
              f"{statistics.median(values):.1f} us, min {min(values):.1f} us, max {max(values):.1f} us")


if __name__ == "__main__":
    main()
