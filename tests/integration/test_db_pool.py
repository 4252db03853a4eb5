"""The engine's pool hands out the connection returned most recently (last in, first out), on real PostgreSQL."""

from __future__ import annotations

from autogpt_workers.store.db import make_engine


def test_a_checkout_takes_the_connection_returned_last(settings) -> None:  # type: ignore[no-untyped-def]
    engine = make_engine(settings.database_url, pool_size=3, max_overflow=0, pre_ping=False)
    try:
        held = [engine.connect() for _ in range(3)]
        pids = [c.exec_driver_sql("SELECT pg_backend_pid()").scalar() for c in held]
        for c in held:  # returned in the order opened: the last one back is the third
            c.close()
        for _ in range(5):  # light load: one statement at a time keeps to that one backend
            with engine.connect() as c:
                assert c.exec_driver_sql("SELECT pg_backend_pid()").scalar() == pids[2]
    finally:
        engine.dispose()
