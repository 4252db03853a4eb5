"""The connections a process's single-statement transactions run on, kept checked out between statements.

A step's claim, proposal and commit are each one statement in autocommit (``phase_sql.run_alone``), as is the API's
submit. Checking a connection out of SQLAlchemy's pool and back in around each of them (a ``Connection`` made, the
pool's queue and its lock, the checkout and checkin events, the reset on return) cost a think worker about as much
CPU as the prepared statement's own round trip: 108 against 57 us per ``SELECT 1`` under gevent (``python -m
bench.pool_micro --gevent``). So the connections used this way stay checked out, in autocommit, on a stack (last in,
first out, as the pool hands them out), at most ``keep`` of them; a statement takes the top one, or a connection from
the pool when the stack is empty.

What the pool does at checkout and checkin is done here for a kept connection:

- after a statement that raised, the connection goes back to the pool (as before: a disconnect has invalidated it,
  and the pool opens a new one), and when the connection was invalidated every kept one goes back too: SQLAlchemy
  replaces every pooled connection as old as one that was found disconnected (a restarted PostgreSQL), and a kept
  one would fail its next statement instead;
- a connection older than the pool's recycle age goes back to the pool, which replaces it;
- with ``ping_after_idle_s`` (the API's engine), a kept connection that idled longer is pinged before use, and
  replaced if the ping fails, as the pool's checkout would;
- none is kept while the pool is nearly exhausted (``reserve`` connections are left to its other users), and a
  transaction about to check one out of a nearly exhausted pool has a kept one returned first (``make_room``): a
  transaction of the ledger's general path does not wait while a connection idles here;
- a forked child forgets its parent's (they are the parent's connections; nothing is sent on them).
"""

from __future__ import annotations

import os
import time
from contextlib import suppress

from sqlalchemy import Connection, Engine
from sqlalchemy.pool import QueuePool

POOL_RECYCLE_S = 1800  # the engines' ``pool_recycle`` (``db.make_engine``)


class KeptConnections:
    def __init__(
        self,
        engine: Engine,
        keep: int,
        *,
        capacity: int,
        reserve: int = 2,
        recycle_s: float = POOL_RECYCLE_S,
        ping_after_idle_s: float | None = None,
    ) -> None:
        self.engine = engine
        # only a queue pool says how many connections are out; any other pool keeps nothing here
        self.keep = keep if isinstance(engine.pool, QueuePool) else 0
        self.capacity = capacity  # the pool's size and overflow
        self.reserve = reserve
        self.recycle_s = recycle_s
        self.ping_after_idle_s = ping_after_idle_s
        self._idle: list[tuple[Connection, float, float]] = []  # (connection, checked out at, last used at)
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self._idle)

    def take(self) -> tuple[Connection, float]:
        """A connection in autocommit and when it was checked out of the pool: the last one kept, else the pool's."""
        if self._pid != os.getpid():  # a forked child: the parent's connections are not its own to use or return
            self._idle.clear()
            self._pid = os.getpid()
        while True:
            try:  # threads share the stack (the API's): a pop, not a check then a pop
                connection, checked_out, used = self._idle.pop()
            except IndexError:
                break
            if self.ping_after_idle_s is None or time.monotonic() - used <= self.ping_after_idle_s:
                return connection, checked_out
            if self._ping(connection):
                return connection, checked_out
        connection = self.engine.connect()
        try:
            dbapi_connection = connection.connection.dbapi_connection
            assert dbapi_connection is not None
            dbapi_connection.autocommit = True
        except BaseException:
            connection.close()
            raise
        return connection, time.monotonic()

    def give(self, connection: Connection, checked_out: float, failed: bool) -> None:
        """Back from a statement (``failed``: it raised): kept, or returned to the pool."""
        if failed or connection.invalidated:
            invalidated = connection.invalidated
            self._return(connection)
            if invalidated:
                self.drain()
            return
        now = time.monotonic()
        if (
            len(self._idle) < self.keep
            and now - checked_out < self.recycle_s
            and self._pid == os.getpid()
            and not connection.in_transaction()
            and self._pool_has_room()
        ):
            self._idle.append((connection, checked_out, now))
            return
        self._return(connection)

    def make_room(self) -> None:
        """Before a checkout of the pool's own (a transaction): one kept connection back to the pool if the pool is
        nearly exhausted, so that the checkout does not wait while a connection idles here."""
        if self._idle and not self._pool_has_room():
            try:
                connection = self._idle.pop()[0]
            except IndexError:
                return
            self._return(connection)

    def drain(self) -> None:
        """Return every kept connection to the pool."""
        while True:
            try:
                connection = self._idle.pop()[0]
            except IndexError:
                return
            self._return(connection)

    def _pool_has_room(self) -> bool:
        pool = self.engine.pool
        assert isinstance(pool, QueuePool)
        return pool.checkedout() + self.reserve <= self.capacity

    def _ping(self, connection: Connection) -> bool:
        """Whether a connection that idled past ``ping_after_idle_s`` still answers; one that does not is invalidated
        and returned (the pool replaces it)."""
        try:
            dbapi_connection = connection.connection.dbapi_connection
            assert dbapi_connection is not None
            self.engine.dialect.do_ping(dbapi_connection)
            return True
        except self.engine.dialect.loaded_dbapi.Error as exc:
            with suppress(Exception):
                connection.invalidate(exc)
            self._return(connection)
            return False

    def _return(self, connection: Connection) -> None:
        """Back to the pool in the state the pool gave it (transactions, not autocommit); an invalidated one is
        only closed (``.connection`` would open a new one)."""
        if not connection.invalidated:
            with suppress(Exception):  # a dead connection: the pool's checkin drops it anyway
                dbapi_connection = connection.connection.dbapi_connection
                if dbapi_connection is not None:
                    dbapi_connection.autocommit = False
        connection.close()
