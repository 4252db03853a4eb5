"""The engine's pool, on real PostgreSQL: it hands out the connection returned most recently (last in, first out),
and with ``ping_after_idle_s`` pings only a connection that idled that long."""

from __future__ import annotations

import time

import pytest
from sqlalchemy.exc import OperationalError

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


def _terminate(settings, pid: int) -> None:  # type: ignore[no-untyped-def]
    """End a backend from another connection, as a PostgreSQL restart ends them all."""
    other = make_engine(settings.database_url, pool_size=1, max_overflow=0, pre_ping=False)
    try:
        with other.connect() as c:
            assert c.exec_driver_sql(f"SELECT pg_terminate_backend({pid})").scalar() is True
    finally:
        other.dispose()


def _counting_pings(engine):  # type: ignore[no-untyped-def]
    pings: list[int] = []
    ping = engine.dialect.do_ping

    def counted(dbapi_connection):  # type: ignore[no-untyped-def]
        pings.append(1)
        return ping(dbapi_connection)

    engine.dialect.do_ping = counted
    return pings


def test_a_connection_reused_within_the_idle_time_is_not_pinged(settings) -> None:  # type: ignore[no-untyped-def]
    engine = make_engine(settings.database_url, pool_size=1, max_overflow=0, ping_after_idle_s=30.0)
    pings = _counting_pings(engine)
    try:
        for _ in range(5):
            with engine.connect() as c:
                assert c.exec_driver_sql("SELECT 1").scalar() == 1
        assert pings == []
    finally:
        engine.dispose()


def test_a_connection_idle_past_the_idle_time_is_pinged_and_replaced_if_dead(settings) -> None:  # type: ignore[no-untyped-def]
    engine = make_engine(settings.database_url, pool_size=1, max_overflow=0, ping_after_idle_s=0.05)
    pings = _counting_pings(engine)
    try:
        with engine.connect() as c:
            pid = c.exec_driver_sql("SELECT pg_backend_pid()").scalar()
        time.sleep(0.1)
        with engine.connect() as c:  # alive: pinged, kept
            assert c.exec_driver_sql("SELECT pg_backend_pid()").scalar() == pid
        assert len(pings) == 1
        _terminate(settings, pid)
        time.sleep(0.1)
        with engine.connect() as c:  # dead: the ping fails, the pool opens another, the statement never sees it
            assert c.exec_driver_sql("SELECT pg_backend_pid()").scalar() != pid
        assert len(pings) == 2
    finally:
        engine.dispose()


def test_a_dead_connection_reused_within_the_idle_time_fails_once(settings) -> None:  # type: ignore[no-untyped-def]
    engine = make_engine(settings.database_url, pool_size=2, max_overflow=0, ping_after_idle_s=30.0)
    try:
        held = [engine.connect() for _ in range(2)]
        pids = [c.exec_driver_sql("SELECT pg_backend_pid()").scalar() for c in held]
        for c in held:
            c.close()
        for pid in pids:  # both backends gone, as in a restart
            _terminate(settings, pid)
        with pytest.raises(OperationalError) as failed, engine.connect() as c:
            c.exec_driver_sql("SELECT 1")
        assert failed.value.connection_invalidated
        # the disconnect discarded every pooled connection as old as the failed one: the next two are new
        for _ in range(2):
            with engine.connect() as c:
                assert c.exec_driver_sql("SELECT pg_backend_pid()").scalar() not in pids
    finally:
        engine.dispose()
