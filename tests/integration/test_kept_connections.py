"""``Database.autocommit``'s kept connections, on real PostgreSQL: single statements keep to a connection without the
pool's checkout, at most ``keep`` are kept and the pool's other users are never starved, and every way a connection
can go bad (a failed statement, a restart that ends the backends, the recycle age, a long idle, a fork) sends it back
to the pool, which replaces it, as it would have before."""

from __future__ import annotations

import time
from typing import Any

import pytest
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import QueuePool

from autogpt_workers.store.db import Database, make_engine
from autogpt_workers.store.phase_sql import _execute_raw


def _pid(db: Database) -> int:
    """One statement through ``autocommit`` as the ledger runs its phase statements (the raw cursor): the backend."""
    with db.autocommit() as connection:
        dbapi_connection = connection.connection.dbapi_connection
        assert dbapi_connection is not None and dbapi_connection.autocommit
        return int(_execute_raw(connection, "SELECT pg_backend_pid()", ()).one()[0])


def _out(db: Database) -> int:
    pool = db.engine.pool
    assert isinstance(pool, QueuePool)
    return pool.checkedout()


def _terminate(settings: Any, *pids: int) -> None:
    """End backends from another connection, as a PostgreSQL restart ends them all."""
    other = make_engine(settings.database_url, pool_size=1, max_overflow=0, pre_ping=False)
    try:
        with other.connect() as c:
            for pid in pids:
                assert c.exec_driver_sql(f"SELECT pg_terminate_backend({pid})").scalar() is True
    finally:
        other.dispose()


@pytest.fixture
def db(settings: Any) -> Any:
    database = Database.from_url(settings.database_url, pool_size=4, max_overflow=0, pre_ping=False)
    yield database
    database.dispose()


def _hold_three(db: Database) -> list[int]:
    """Three statements at once (nested), each on its own connection; the backends, innermost last."""
    pids = []
    with db.autocommit() as a, db.autocommit() as b, db.autocommit() as c:
        for connection in (a, b, c):
            pids.append(int(_execute_raw(connection, "SELECT pg_backend_pid()", ()).one()[0]))
    return pids


def test_single_statements_keep_to_one_connection_out_of_the_pool(db: Database) -> None:
    pids = {_pid(db) for _ in range(5)}
    assert len(pids) == 1
    assert len(db._kept) == 1 and _out(db) == 1  # kept checked out, in autocommit (``_pid`` checks)
    db.dispose()
    assert len(db._kept) == 0 and _out(db) == 0


def test_at_most_keep_are_kept_and_two_are_always_left_to_the_pool(db: Database) -> None:
    assert db._kept.keep == 2  # half of the pool of 4
    _hold_three(db)
    # the innermost came back with 3 of 4 out (1 + the reserve of 2 > 4 - 3): to the pool; the next two were kept
    assert len(db._kept) == 2 and _out(db) == 2
    # both kept and two taken by others: a transaction about to wait on the pool gets a kept one back first
    held = [db.engine.connect() for _ in range(2)]
    try:
        with db.core_transaction() as tx:
            assert tx.connection().exec_driver_sql("SELECT 1").scalar() == 1
        assert len(db._kept) == 1
    finally:
        for connection in held:
            connection.close()


def test_a_statement_that_raises_sends_its_connection_back(db: Database) -> None:
    kept = _pid(db)
    with pytest.raises(Exception, match="division by zero"), db.autocommit() as connection:
        _execute_raw(connection, "SELECT 1 / 0", ())
    assert len(db._kept) == 0 and _out(db) == 0
    assert _pid(db) == kept  # back in the pool, alive: the pool hands it out again


def test_after_a_restart_one_statement_fails_and_every_kept_connection_is_replaced(db: Database, settings: Any) -> None:
    pids = _hold_three(db)
    assert len(db._kept) == 2
    _terminate(settings, *pids)  # as a restart does
    with pytest.raises(OperationalError) as failed:
        _pid(db)
    assert failed.value.connection_invalidated
    assert len(db._kept) == 0
    # the disconnect sent back every kept connection, and the pool replaces every connection as old: no second failure
    for _ in range(3):
        assert _pid(db) not in pids
    with db.core_transaction() as tx:
        assert tx.connection().exec_driver_sql("SELECT pg_backend_pid()").scalar() not in pids


def test_a_connection_past_the_recycle_age_goes_back_to_the_pool(db: Database) -> None:
    db._kept.recycle_s = 0.0
    _pid(db)
    assert len(db._kept) == 0 and _out(db) == 0


def test_a_statement_through_sqlalchemy_leaves_its_connection_to_the_pool(db: Database) -> None:
    """A statement SQLAlchemy executes begins its own transaction on the connection: not kept in that state."""
    with db.autocommit() as connection:
        assert connection.exec_driver_sql("SELECT 1").scalar() == 1
    assert len(db._kept) == 0 and _out(db) == 0


def test_a_kept_connection_idle_past_the_ping_age_is_pinged_and_replaced_if_dead(settings: Any) -> None:
    db = Database.from_url(settings.database_url, pool_size=4, max_overflow=0, ping_after_idle_s=0.05)
    pings: list[int] = []
    ping = db.engine.dialect.do_ping
    db.engine.dialect.do_ping = lambda c: (pings.append(1), ping(c))[1]  # type: ignore[method-assign]
    try:
        first = _pid(db)
        assert _pid(db) == first and pings == []  # reused at once: not pinged
        time.sleep(0.1)
        assert _pid(db) == first and len(pings) == 1  # idle past the age, alive: pinged, kept
        time.sleep(0.1)
        _terminate(settings, first)
        assert _pid(db) != first  # dead: the ping failed, the statement ran on a new connection
        assert len(db._kept) == 1
    finally:
        db.dispose()


def test_a_forked_child_forgets_its_parents_connections(db: Database) -> None:
    _pid(db)
    assert len(db._kept) == 1
    parents = db._kept._idle[0][0]
    db._kept._pid = -1  # as in a child: the process id is not the one the connections were kept in
    try:
        with db.autocommit() as connection:
            assert connection is not parents and len(db._kept) == 0  # forgotten, not used, not returned
    finally:
        parents.close()  # the test's own process: give the pool its connection back
