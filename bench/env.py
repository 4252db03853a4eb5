"""The bench's own PostgreSQL database and RabbitMQ vhost, created idempotently, and the SQL the bench needs.

The bench empties tables and purges queues between figures, so it never defaults to the platform's own database:
``AUTOGPT_BENCH_DATABASE_URL`` / ``AUTOGPT_BENCH_BROKER_URL`` (or ``--database-url`` / ``--broker-url``) choose
them, else ``autogpt_bench`` on the local services.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import unquote, urlparse

import psycopg2
import psycopg2.extensions
from psycopg2 import sql

from bench.rabbit import Management

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATABASE_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/autogpt_bench"
DEFAULT_BROKER_URL = "amqp://guest:guest@127.0.0.1:5672/autogpt_bench"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/15"
# tables the bench never empties: Alembic's and LangGraph's bookkeeping, the bench tenant and its API key
KEEP_TABLES = {"alembic_version", "checkpoint_migrations", "tenants", "api_keys"}
OPEN_TASK = ("queued", "running")


def libpq_url(url: str) -> str:
    """``postgresql+psycopg2://...`` -> ``postgresql://...`` (what libpq and psycopg accept)."""
    scheme, rest = url.split("://", 1)
    return "postgresql://" + rest if scheme.startswith("postgresql") else url


def admin_url(url: str) -> str:
    """The libpq URL of the server's ``postgres`` database (to create, drop or read the statistics of another)."""
    return urlparse(libpq_url(url))._replace(path="/postgres").geturl()


def database_name(url: str) -> str:
    return unquote(urlparse(libpq_url(url)).path.lstrip("/"))


def vhost_name(url: str) -> str:
    path = urlparse(url).path
    return unquote(path[1:]) if len(path) > 1 else "/"


class Sql:
    """One autocommit connection; counts the transactions it makes (the cost figure subtracts them)."""

    def __init__(self, url: str) -> None:
        self.url = libpq_url(url)
        self.statements = 0
        self._conn: Any = None

    def _connection(self) -> Any:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg2.connect(self.url, application_name="autogpt-bench")
            self._conn.autocommit = True
        return self._conn

    def rows(self, query: str | sql.Composed, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._connection().cursor() as cur:
            self.statements += 1
            cur.execute(query, args)
            return list(cur.fetchall()) if cur.description else []

    def scalar(self, query: str | sql.Composed, args: tuple[Any, ...] = ()) -> Any:
        rows = self.rows(query, args)
        return rows[0][0] if rows else None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


@dataclasses.dataclass
class BenchEnv:
    database_url: str
    broker_url: str
    redis_url: str
    work_dir: Path  # logs, workspaces, floor files
    overrides: dict[str, str] = dataclasses.field(default_factory=dict)  # --set NAME=VALUE
    _mgmt: Management | None = dataclasses.field(default=None, repr=False)

    @classmethod
    def from_environ(
        cls, database_url: str | None, broker_url: str | None, redis_url: str | None, work_dir: Path
    ) -> BenchEnv:
        return cls(
            database_url=database_url or os.environ.get("AUTOGPT_BENCH_DATABASE_URL", DEFAULT_DATABASE_URL),
            broker_url=broker_url or os.environ.get("AUTOGPT_BENCH_BROKER_URL", DEFAULT_BROKER_URL),
            redis_url=redis_url or os.environ.get("AUTOGPT_BENCH_REDIS_URL", DEFAULT_REDIS_URL),
            work_dir=work_dir,
        )

    @property
    def database(self) -> str:
        return database_name(self.database_url)

    @property
    def vhost(self) -> str:
        return vhost_name(self.broker_url)

    @property
    def mgmt(self) -> Management:
        if self._mgmt is None:
            self._mgmt = Management(self.broker_url)
        return self._mgmt

    @property
    def log_dir(self) -> Path:
        return self.work_dir / "logs"

    def process_env(self, **extra: str) -> dict[str, str]:
        """The environment of every process the bench starts (platform, floor, peer)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AUTOGPT_", "OPENAI_"))}
        env.update(
            AUTOGPT_ENV="development",
            AUTOGPT_DATABASE_URL=self.database_url,
            AUTOGPT_BROKER_URL=self.broker_url,
            AUTOGPT_REDIS_URL=self.redis_url,
            AUTOGPT_WORKSPACE_ROOT=str(self.work_dir / "workspaces"),
            AUTOGPT_MEMORY_PATH=str(self.work_dir / "memory" / "memory.sqlite3"),  # not the developer's own store
            AUTOGPT_METRICS_PORT="0",  # several workers on one host: no /metrics port to fight over
            # no Flower watches the bench: Celery's task events (its feed, ~7 messages per step) are off unless
            # asked for with --set AUTOGPT_TASK_EVENTS=true; the table says which
            AUTOGPT_TASK_EVENTS="false",
            PYTHONPATH=str(REPO_ROOT),
            PYTHONUNBUFFERED="1",
        )
        env.update(self.overrides)
        env.update(extra)
        return env

    # -- set-up --------------------------------------------------------------------------------------------------

    def ensure_services(self) -> None:
        """Create the database and the vhost if missing (idempotent), then migrate and declare the queues."""
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        conn = psycopg2.connect(admin_url(self.database_url), application_name="autogpt-bench")
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (self.database,))
                if cur.fetchone() is None:
                    with contextlib.suppress(psycopg2.errors.DuplicateDatabase):
                        cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.database)))
        finally:
            conn.close()
        self.mgmt.ensure_vhost()
        migrated = subprocess.run(
            [sys.executable, "-m", "autogpt_workers.cli", "migrate"],
            env=self.process_env(),
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if migrated.returncode != 0:
            raise RuntimeError(f"autogpt-workers migrate failed:\n{migrated.stdout}{migrated.stderr}")

    # -- state between figures -----------------------------------------------------------------------------------

    def truncate(self, db: Sql) -> None:
        """Empty every table of the bench database but the migrations' bookkeeping."""
        tables = [
            r[0]
            for r in db.rows("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
            if r[0] not in KEEP_TABLES
        ]
        if tables:
            db.rows(sql.SQL("TRUNCATE {} CASCADE").format(sql.SQL(", ").join(sql.Identifier(t) for t in tables)))

    def cancel_open_tasks(self, db: Sql) -> int:
        """End every open task ``cancelled`` so in-flight deliveries ack without executing (between figures)."""
        return len(
            db.rows(
                "UPDATE tasks SET status = 'cancelled', finished_at = now() WHERE status IN %s RETURNING id",
                (OPEN_TASK,),
            )
        )

    def purge_queues(self) -> None:
        for name in self.mgmt.queue_names():
            self.mgmt.purge(name)

    def settle(self, db: Sql, timeout_s: float = 60.0) -> None:
        """Cancel open tasks, purge the queues and wait until no step is held, then empty the tables."""
        self.cancel_open_tasks(db)
        self.purge_queues()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            held = db.scalar("SELECT count(*) FROM steps WHERE status IN ('thinking', 'acting')")
            if not held:
                break
            time.sleep(0.25)
        time.sleep(0.5)  # a delivery between its claim's commit and its ack
        self.purge_queues()
        self.truncate(db)

    @contextlib.contextmanager
    def sql(self) -> Iterator[Sql]:
        db = Sql(self.database_url)
        try:
            yield db
        finally:
            db.close()


class XactCounts(NamedTuple):
    """A database's counters in ``pg_stat_database``."""

    commits: int  # xact_commit
    rollbacks: int  # xact_rollback
    sessions: int  # connections opened: each also adds one commit, its backend's start-up (catalog) transaction


def xact_counts(database_url: str, database: str) -> XactCounts:
    """The counters of ``database``, read over a connection to another database."""
    conn = psycopg2.connect(admin_url(database_url), application_name="autogpt-bench")
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT xact_commit, xact_rollback, sessions FROM pg_stat_database WHERE datname = %s", (database,)
            )
            row = cur.fetchone()
    finally:
        conn.close()
    return XactCounts(int(row[0]), int(row[1]), int(row[2])) if row else XactCounts(0, 0, 0)
