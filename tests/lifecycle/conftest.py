"""Fixtures of the lifecycle tests: a database and a RabbitMQ vhost of their own (``<test db>_lc``,
``<test vhost>_lc``), so no other worker or reaper of the pytest session touches their tasks, and worker processes
started from the CLI on them, against the fake LLM.

The database is recreated at the start of the session; the vhost is created through the management API and
deleted at the end.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, select, text

from tests.conftest import REPO_ROOT, Proc, free_port

MGMT = "http://127.0.0.1:15672"
TERMINAL = ("completed", "failed", "cancelled")


def _with_db(url: str, name: str) -> str:
    base, _, _ = url.rpartition("/")
    return f"{base}/{name}"


@pytest.fixture(scope="session")
def lc_urls(settings) -> Iterator[tuple[str, str]]:  # type: ignore[no-untyped-def]
    """(database URL, broker URL) of the lifecycle tests' own database and vhost."""
    db_name = settings.database_url.rpartition("/")[2].split("?")[0] + "_lc"
    admin = create_engine(_with_db(settings.database_url, "postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{db_name}"'))
    parsed = urllib.parse.urlparse(settings.broker_url)
    base_vhost = urllib.parse.unquote(parsed.path[1:]) if parsed.path not in ("", "/") else "root"
    vhost = f"{base_vhost}_lc"
    quoted = urllib.parse.quote(vhost, safe="")
    auth = (parsed.username or "guest", parsed.password or "guest")
    httpx.put(f"{MGMT}/api/vhosts/{quoted}", auth=auth, timeout=10).raise_for_status()
    httpx.put(
        f"{MGMT}/api/permissions/{quoted}/{auth[0]}",
        json={"configure": ".*", "write": ".*", "read": ".*"},
        auth=auth,
        timeout=10,
    ).raise_for_status()
    urls = (_with_db(settings.database_url, db_name), f"{parsed.scheme}://{parsed.netloc}/{quoted}")
    env = {**os.environ, "AUTOGPT_DATABASE_URL": urls[0], "AUTOGPT_BROKER_URL": urls[1]}
    done = subprocess.run(
        [sys.executable, "-m", "autogpt_workers.cli", "migrate"], env=env, cwd=REPO_ROOT, capture_output=True,
        text=True, timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    try:
        yield urls
    finally:
        httpx.delete(f"{MGMT}/api/vhosts/{quoted}", auth=auth, timeout=30)
        admin.dispose()


@pytest.fixture(scope="session")
def lc_db(lc_urls):  # type: ignore[no-untyped-def]
    from autogpt_workers.store.db import Database

    database = Database.from_url(lc_urls[0], pool_size=4, max_overflow=4)
    yield database
    database.dispose()


@pytest.fixture(scope="session")
def lc_publisher(lc_urls):  # type: ignore[no-untyped-def]
    """A publisher on the lifecycle vhost (the process's default Celery app points at the session's vhost)."""
    from autogpt_workers.broker import Publisher
    from autogpt_workers.celery_app import make_celery
    from autogpt_workers.config import Settings

    return Publisher(make_celery(Settings(database_url=lc_urls[0], broker_url=lc_urls[1])))


_MEMORY_DIR = Path(tempfile.mkdtemp(prefix="autogpt-lifecycle-memory-"))


def lc_env(lc_urls: tuple[str, str], fake_llm: str, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        AUTOGPT_DATABASE_URL=lc_urls[0],
        AUTOGPT_BROKER_URL=lc_urls[1],
        OPENAI_BASE_URL=f"{fake_llm}/v1",
        OPENAI_API_KEY="test-key",
        AUTOGPT_LLM_MODEL="scripted-demo",
        AUTOGPT_LEASE_HEARTBEAT_S="0.5",  # a cancel reaches an in-flight LLM call within half a second
        AUTOGPT_API_AUTH="disabled",
        AUTOGPT_MEMORY_EMBEDDER="openai",  # the fake LLM embeds: the local model is not under test here
        # a memory file of its own: one store keeps one embedding model, and the session's file may already hold
        # the local model's vectors (tests/e2e runs first in make test)
        AUTOGPT_MEMORY_PATH=str(_MEMORY_DIR / "lifecycle-memory.sqlite3"),
        **extra,
    )
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    return env


class LifecycleStack:
    """API, think worker, act worker and reaper on the lifecycle database and vhost."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        port = free_port()
        self.api_url = f"http://127.0.0.1:{port}"
        self.procs = {
            "api": Proc("lc-api", ["api", "--port", str(port)], env),
            "think": Proc("lc-think", ["worker", "--queue", "think", "--concurrency", "16",
                                       "--hostname", "think-lc@%h"], env),
            "act": Proc("lc-act", ["worker", "--queue", "act", "--concurrency", "2", "--hostname", "act-lc@%h"],
                        env),
            "reaper": Proc("lc-reaper", ["reaper"], env),
        }

    def __getitem__(self, name: str) -> Proc:
        return self.procs[name]

    def start(self) -> None:
        for proc in self.procs.values():
            proc.start()
        deadline = time.monotonic() + 45
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.api_url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"the lifecycle API did not start; see {self.procs['api'].log_path}")

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.stop()

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.post(f"{self.api_url}{path}", timeout=30, **kwargs)

    def submit(self, goal: str, **fields: Any) -> uuid.UUID:
        resp = self.post("/v1/tasks", json={"goal": goal, **fields})
        assert resp.status_code == 201, resp.text
        return uuid.UUID(resp.json()["id"])


@pytest.fixture(scope="module")
def lc_stack(lc_urls, fake_llm: str) -> Iterator[LifecycleStack]:  # type: ignore[no-untyped-def]
    stack = LifecycleStack(lc_env(lc_urls, fake_llm))
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()


# -- helpers shared by the tests ---------------------------------------------------------------------------------


def task_row(db: Any, task_id: uuid.UUID) -> Any:
    from autogpt_workers.store.models import Task

    with db.session() as s:
        return s.get_one(Task, task_id)


def steps_of(db: Any, task_id: uuid.UUID) -> list[Any]:
    from autogpt_workers.store.models import Step

    with db.session() as s:
        return list(s.scalars(select(Step).where(Step.task_id == task_id).order_by(Step.step_index)))


def events_of(db: Any, task_id: uuid.UUID) -> list[Any]:
    from autogpt_workers.store.models import TaskEvent

    with db.session() as s:
        return list(s.scalars(select(TaskEvent).where(TaskEvent.task_id == task_id).order_by(TaskEvent.id)))


def wait_for(predicate: Any, timeout_s: float = 60, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"{what} not reached within {timeout_s}s")


def wait_status(db: Any, task_id: uuid.UUID, statuses: tuple[str, ...] = TERMINAL, timeout_s: float = 90) -> Any:
    def reached() -> Any:
        task = task_row(db, task_id)
        return task if task.status in statuses else None

    return wait_for(reached, timeout_s, f"task {task_id} in {statuses}")
