"""Engine and session factory. One engine per process, made from the settings at the edge."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any, Protocol

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import Session, sessionmaker


def make_engine(
    url: str, pool_size: int = 10, max_overflow: int = 20, pre_ping: bool = True, ping_after_idle_s: float | None = None
) -> Engine:
    engine = create_engine(
        url,
        pool_size=pool_size,
        max_overflow=max_overflow,
        # pre-ping: a stale pooled connection (PostgreSQL restarted) is replaced before use, at one round trip per
        # checkout (and, being run in autocommit, a transaction of its own). The step runner, the reaper and the
        # dispatcher turn it off: there the first statement on a stale connection fails as a disconnect, SQLAlchemy
        # discards every pooled connection of that age, and the callers retry (``StepRunner._persist``, the Celery
        # glue's database-down retry, the next round). ``ping_after_idle_s`` pings only what idled that long
        pool_pre_ping=pre_ping and ping_after_idle_s is None,
        pool_recycle=1800,
        # last in, first out: a checkout takes the connection returned most recently, so at light load a process
        # keeps reusing the few backends that are hot (in PostgreSQL's caches, scheduled) instead of cycling through
        # all of its pool; the rest idle. One task of 50 steps: p50 10.3-10.7 ms against 12.4-13.8 ms first in,
        # first out, p99 14.0-14.7 against 15.7-21.0 ms (``python -m bench --only cpu,latency``, three runs each)
        pool_use_lifo=True,
        connect_args={"connect_timeout": 5, "application_name": "autogpt-workers"},
    )
    if pre_ping and ping_after_idle_s is not None:
        ping_after_idle(engine, ping_after_idle_s)
    return engine


_RETURNED_AT = "autogpt_returned_at"


def ping_after_idle(engine: Engine, idle_s: float) -> None:
    """Pre-ping a pooled connection at checkout only if it sat in the pool longer than ``idle_s`` (the API's: a busy
    API reuses its connections within milliseconds, and the ping was a round trip and a transaction of its own per
    submit, beside the submit's one statement). A ping that fails discards the connection, and the pool takes
    another (SQLAlchemy's checkout-event disconnect handling, up to three attempts). A connection used within
    ``idle_s`` of a PostgreSQL restart fails its first statement instead, as a disconnect: SQLAlchemy then discards
    every pooled connection as old as it, so a process sees that once per restart (the API answers it 503)."""

    @event.listens_for(engine, "checkin")
    def _returned(dbapi_connection: Any, record: Any) -> None:
        if dbapi_connection is not None:  # None: invalidated, its replacement will be new
            record.info[_RETURNED_AT] = time.monotonic()  # the info lives as long as the DBAPI connection

    @event.listens_for(engine, "checkout")
    def _ping_if_idle(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        returned = record.info.get(_RETURNED_AT)  # None: a new connection, nothing to check
        idle = time.monotonic() - returned if returned is not None else 0.0
        if idle <= idle_s:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except engine.dialect.loaded_dbapi.Error as exc:
            raise DisconnectionError(f"a pooled connection idle for {idle:.1f} s failed its ping: {exc}") from exc


class Tx(Protocol):
    """What the ledger's statement helpers need of a transaction: a ``Session`` or a ``CoreTransaction``."""

    def connection(self) -> Connection: ...


class CoreTransaction:
    """A transaction's connection behind the one method of ``Session`` the ledger's statements use."""

    __slots__ = ("_connection",)

    def __init__(self, connection: Connection) -> None:
        self._connection = connection

    def connection(self) -> Connection:
        return self._connection


class Database:
    """A process's handle on PostgreSQL."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.prepared_statements = False  # the step ledger's phase statements are prepared on each connection
        self.prepared_submit = False  # the submit's statements are (the API's engine)
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    @classmethod
    def from_url(
        cls,
        url: str,
        pool_size: int = 10,
        max_overflow: int = 20,
        *,
        pre_ping: bool = True,
        ping_after_idle_s: float | None = None,
    ) -> Database:
        return cls(make_engine(url, pool_size, max_overflow, pre_ping, ping_after_idle_s))

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """One transaction: committed on success, rolled back on any exception."""
        with self._sessions() as session, session.begin():
            yield session

    @contextmanager
    def core_transaction(self) -> Iterator[CoreTransaction]:
        """One transaction on a pooled connection, without an ORM session: for code that only runs statements on
        ``.connection()`` (the step ledger's hot path, where the session's bookkeeping was a tenth of the
        worker's CPU). Committed on success, rolled back on any exception."""
        with self.engine.begin() as connection:
            yield CoreTransaction(connection)

    @contextmanager
    def autocommit(self) -> Iterator[Connection]:
        """A pooled connection whose statements each commit on their own (the driver's autocommit: no BEGIN and no
        COMMIT round trip), for a single statement that is a whole transaction. Back to transactions on return."""
        with self.engine.connect() as connection:
            dbapi_connection = connection.connection.dbapi_connection
            assert dbapi_connection is not None
            dbapi_connection.autocommit = True
            try:
                yield connection
            finally:
                with suppress(Exception):  # invalidated on a disconnect: the pool drops it anyway
                    dbapi_connection.autocommit = False

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session for reads."""
        with self._sessions() as session:
            yield session

    def dispose(self) -> None:
        self.engine.dispose()
