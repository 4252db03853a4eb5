"""Fixtures for the front door: a second API process with API keys required and the dispatcher (admission and
webhooks), both on top of the session's real workers and reaper (``tests/conftest.py`` ``stack``); API keys made
with the same code as ``autogpt-workers keys create``; a local webhook receiver that can be down.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from tests.conftest import Proc, Stack, free_port

# Quick rounds so every behaviour shows within a test; the rate limit is high enough never to bother other tests.
GATEWAY_ENV = {
    "AUTOGPT_API_AUTH": "required",
    "AUTOGPT_API_RATE_PER_S": "500",
    "AUTOGPT_API_RATE_BURST": "1000",
    "AUTOGPT_AP_STEP_WAIT_S": "90",
    "AUTOGPT_SSE_POLL_S": "0.1",
    "AUTOGPT_DISPATCHER_INTERVAL_S": "0.1",
    "AUTOGPT_WEBHOOK_TIMEOUT_S": "2",
    "AUTOGPT_WEBHOOK_BACKOFF_BASE_S": "0.3",
    "AUTOGPT_WEBHOOK_BACKOFF_MAX_S": "1",
    "AUTOGPT_WEBHOOK_MAX_ATTEMPTS": "40",
}


@dataclasses.dataclass(frozen=True)
class Tenant:
    id: str
    key: str
    webhook_secret: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


class Gateway:
    """The secured API and the dispatcher; ``restart`` them with other settings (e.g. a platform cap)."""

    def __init__(self, stack: Stack, db: Any) -> None:
        self.stack = stack
        self.db = db
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.overrides: dict[str, str] = {}
        self.api: Proc | None = None
        self.dispatcher: Proc | None = None

    def env(self) -> dict[str, str]:
        return {**self.stack.env, **GATEWAY_ENV, **self.overrides}

    def start(self) -> None:
        env = self.env()
        self.api = Proc("api-gateway", ["api", "--port", str(self.port)], env).start()
        self.dispatcher = Proc("dispatcher", ["dispatcher"], env).start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        pytest.fail(f"the gateway API did not start; see {self.api.log_path}")

    def stop(self) -> None:
        for proc in (self.api, self.dispatcher):
            if proc is not None:
                proc.stop()

    def restart(self, **overrides: str) -> None:
        self.stop()
        self.overrides = overrides
        self.start()

    def tenant(self, prefix: str = "t", **limits: Any) -> Tenant:
        from autogpt_workers.tenants import Limits, create_key

        tenant_id = f"{prefix}-{uuid.uuid4().hex[:8]}"
        key, _, secret = create_key(self.db, tenant_id, "tests", Limits(**limits))
        return Tenant(tenant_id, key, secret)

    def client(self, tenant: Tenant, timeout: float = 60) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=tenant.headers, timeout=timeout)


def cancel_unfinished(db: Any, tenant_id: str | None = None, timeout_s: float = 60) -> None:
    """Cancel every unfinished task (of one tenant, or all) and wait until none holds a slot: earlier tests leave
    tasks waiting for approval on purpose, and a test of the platform's cap needs the slots free."""
    from sqlalchemy import select

    from autogpt_workers import lifecycle
    from autogpt_workers.broker import Publisher
    from autogpt_workers.celery_app import app as celery_app
    from autogpt_workers.store.ledger import TERMINAL_TASK
    from autogpt_workers.store.models import Task

    def unfinished() -> list[Any]:
        with db.session() as s:
            stmt = select(Task.id).where(Task.status.not_in(TERMINAL_TASK))
            if tenant_id is not None:
                stmt = stmt.where(Task.tenant_id == tenant_id)
            return list(s.scalars(stmt))

    publisher = Publisher(celery_app)
    for task_id in unfinished():
        with contextlib.suppress(lifecycle.LifecycleConflict):  # it finished meanwhile
            lifecycle.cancel(db, publisher, task_id)
    wait_for(lambda: not unfinished(), timeout_s, "unfinished tasks cancelled")


def clear_backlog(db: Any, database_url: str, redis_url: str, timeout_s: float = 60) -> None:
    """What earlier test modules left for the workers (tasks submitted with no worker running, their wake-ups in
    the think queue) cancelled and drained, and the backlog flag of a dispatcher that saw them lowered: otherwise
    the gateway's dispatcher finds the queue backed up and holds the first submits in the admission queue
    (``waiting_for_slot``), whichever order the modules ran in."""
    from redis import Redis

    from autogpt_workers.backlog import WAITING_SUFFIX, flag_key
    from autogpt_workers.celery_app import app as celery_app
    from autogpt_workers.contracts import THINK_QUEUE

    cancel_unfinished(db, timeout_s=timeout_s)

    def drained() -> bool:
        with celery_app.connection_for_write() as conn:
            return int(conn.default_channel.queue_declare(THINK_QUEUE, passive=True).message_count) == 0

    wait_for(drained, timeout_s, "think queue drained")
    redis = Redis.from_url(redis_url)
    try:
        key = flag_key(database_url)
        redis.delete(key, key + WAITING_SUFFIX)
    finally:
        redis.close()


@pytest.fixture(scope="session")
def gateway(stack: Stack, db: Any, settings: Any) -> Iterator[Gateway]:
    clear_backlog(db, settings.database_url, settings.redis_url)
    gw = Gateway(stack, db)
    gw.start()
    try:
        yield gw
    finally:
        gw.stop()


def wait_for(predicate: Any, timeout_s: float = 60, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"{what} not reached within {timeout_s}s")


def wait_terminal(client: httpx.Client, task_id: str, timeout_s: float = 90) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        task: dict[str, Any] = client.get(f"/v1/tasks/{task_id}").raise_for_status().json()
        return task if task["status"] in ("completed", "failed", "cancelled") else None

    result: dict[str, Any] = wait_for(done, timeout_s, f"task {task_id} finished")
    return result


@dataclasses.dataclass
class Received:
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Receiver:
    """A webhook receiver on 127.0.0.1:``port``: records every POST; ``status`` is what it answers."""

    def __init__(self, port: int | None = None, status: int = 204) -> None:
        self.port = port or free_port()
        self.status = status
        self.received: list[Received] = []
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                receiver.received.append(Received({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(receiver.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver().start()
    try:
        yield r
    finally:
        r.stop()
