"""Helpers of the integration tests: a RabbitMQ vhost and a PostgreSQL database of a test module's own."""

from __future__ import annotations

import contextlib
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, event, make_url, text

from autogpt_workers.broker import Publisher
from autogpt_workers.store.db import Database
from autogpt_workers.store.migrate import upgrade
from autogpt_workers.submit import flush_marks

MGMT = "http://127.0.0.1:15672"


def management_auth(broker_url: str) -> tuple[str, str]:
    parsed = urllib.parse.urlparse(broker_url)
    return parsed.username or "guest", parsed.password or "guest"


def vhost_of(broker_url: str) -> str:
    path = urllib.parse.urlparse(broker_url).path
    return urllib.parse.unquote(path[1:]) if path not in ("", "/") else "/"


@contextlib.contextmanager
def private_vhost(broker_url: str, suffix: str) -> Iterator[str]:
    """``<the broker URL's vhost>_<suffix>``, created empty through the management API, deleted at the end; yields
    its broker URL. No worker of the session consumes there, so messages stay on its queues to be read back."""
    parsed = urllib.parse.urlparse(broker_url)
    quoted = urllib.parse.quote(f"{vhost_of(broker_url).strip('/') or 'root'}_{suffix}", safe="")
    auth = management_auth(broker_url)
    httpx.delete(f"{MGMT}/api/vhosts/{quoted}", auth=auth, timeout=30)  # a clean slate
    httpx.put(f"{MGMT}/api/vhosts/{quoted}", auth=auth, timeout=10).raise_for_status()
    httpx.put(f"{MGMT}/api/permissions/{quoted}/{auth[0]}", json={"configure": ".*", "write": ".*", "read": ".*"},
              auth=auth, timeout=10).raise_for_status()
    try:
        yield f"{parsed.scheme}://{parsed.netloc}/{quoted}"
    finally:
        httpx.delete(f"{MGMT}/api/vhosts/{quoted}", auth=auth, timeout=30)


def drop_connections(broker_url: str) -> None:
    """Close every client connection of the broker URL's vhost from the broker's side (the management API), once it
    lists at least one, as a broker restart would for them."""
    auth, vhost = management_auth(broker_url), urllib.parse.quote(vhost_of(broker_url), safe="")
    deadline = time.monotonic() + 20
    while not (conns := httpx.get(f"{MGMT}/api/vhosts/{vhost}/connections", auth=auth, timeout=10).json()):
        assert time.monotonic() < deadline, "the management API never listed the publisher's connection"
        time.sleep(0.5)
    for conn in conns:
        httpx.delete(f"{MGMT}/api/connections/{urllib.parse.quote(conn['name'], safe='')}", auth=auth, timeout=10)
    time.sleep(0.5)


@contextlib.contextmanager
def private_database(database_url: str, suffix: str) -> Iterator[Database]:
    """``<the test database>_<suffix>``, created and migrated, dropped at the end: no dispatcher of the session's
    stacks admits its tasks or claims its webhook deliveries, and its notifications reach only its listeners."""
    url = make_url(database_url)
    name = f"{url.database}_{suffix}"
    admin = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    own = url.set(database=name).render_as_string(hide_password=False)
    upgrade(own)
    database = Database.from_url(own, pool_size=2, max_overflow=2)
    try:
        yield database
    finally:
        flush_marks(database)  # the submissions' published marks, before the database is dropped under them
        database.dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextlib.contextmanager
def counted(target: object, name: str) -> Iterator[list[int]]:
    """``[n]``: how many times SQLAlchemy fired event ``name`` on ``target`` (an engine's ``commit``, a pool's
    ``checkout``) inside the block."""
    seen = [0]

    def count(*_: object) -> None:
        seen[0] += 1

    event.listen(target, name, count)
    try:
        yield seen
    finally:
        event.remove(target, name, count)


def plans_of(db: Database, call: Callable[[], object]) -> list[str]:
    """The plans PostgreSQL makes for the statements ``call`` runs on ``db``, with sequential scans priced out: a
    table still scanned from end to end has no index the statement can use. Explained, not run again."""
    statements: list[tuple[str, Any]] = []
    caller = threading.get_ident()

    def seen(conn: object, cursor: object, statement: str, parameters: Any, context: object, many: bool) -> None:
        if threading.get_ident() == caller:  # not a thread another test left running on the same engine
            statements.append((statement, parameters))

    event.listen(db.engine, "before_cursor_execute", seen)
    try:
        call()
    finally:
        event.remove(db.engine, "before_cursor_execute", seen)
    plans = []
    with db.engine.connect() as conn:
        dbapi_connection = conn.connection.dbapi_connection
        assert dbapi_connection is not None
        cursor = dbapi_connection.cursor()
        cursor.execute("SET LOCAL enable_seqscan = off")  # for this transaction only, which the rollback ends
        for statement, parameters in statements:
            cursor.execute(f"EXPLAIN {statement}", parameters)
            plans.append("\n".join(row[0] for row in cursor.fetchall()))
        dbapi_connection.rollback()
    return plans


@pytest.fixture
def publisher() -> Publisher:
    """A publisher on the test broker (the celery app's own connection pool)."""
    from autogpt_workers.celery_app import app

    return Publisher(app)


@pytest.fixture
def prepared_db(settings: Any) -> Iterator[Database]:
    """A database handle as the API's: the submit's statements prepared on its one connection."""
    from autogpt_workers.store import phase_sql, submit_sql

    database = Database.from_url(settings.database_url, pool_size=1, max_overflow=0)
    phase_sql.prepare_submit_on_connect(database, submit_sql.SUBMIT_STATEMENTS)
    yield database
    database.dispose()
