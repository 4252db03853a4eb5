"""Webhooks: signed POSTs of a task's events to the URL it was submitted with, retried with backoff.

Deliveries come from an outbox, ``webhook_deliveries``, whose rows a database trigger writes in the same
transaction as the event (see ``store.gateway``). The dispatcher process claims due rows (a short lease, so several
dispatchers can run), POSTs them concurrently with a timeout, and records the outcome. Nothing in a task's run waits
for a webhook: a receiver that is slow, down or gone only delays its own deliveries.

The request
    ``POST <webhook_url>``, ``Content-Type: application/json``, body::

        {"id": "evt_<event id>", "type": "task.completed", "task_id": "...", "step_index": 4,
         "created_at": "<event time, ISO 8601>", "data": {...}, "task": {"status": "completed", ...}}

    The body is fixed at the first attempt: every retry sends the same bytes (deduplicate on ``id``). Events of one
    task carry increasing ids, but deliveries may arrive out of order after retries.
Headers
    ``X-AutoGPT-Event``      the event type
    ``X-AutoGPT-Delivery``   the delivery id (stable across retries)
    ``X-AutoGPT-Timestamp``  Unix seconds when this attempt was signed
    ``X-AutoGPT-Signature``  ``v1=`` + hex HMAC-SHA256(tenant webhook secret, ``<timestamp>.<raw body>``)
    Verify with ``verify_signature`` (or the same HMAC in any language), and refuse timestamps older than a few
    minutes to stop replays.
Outcome
    Any 2xx: delivered. 410 Gone: the receiver unsubscribed, dead at once. Anything else (other status, timeout,
    refused connection): retried after ``min(webhook_backoff_max_s, webhook_backoff_base_s * 2**(attempts-1))``
    plus up to 10 % jitter, until ``webhook_max_attempts``; then dead (kept for inspection).
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import structlog
import tenacity
from sqlalchemy import func, or_, select, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from autogpt_workers.config import Settings
from autogpt_workers.contracts import TaskStatus
from autogpt_workers.store.db import Database
from autogpt_workers.store.gateway import TaskOptions, Tenant, WebhookDelivery
from autogpt_workers.store.models import Task, TaskEvent
from autogpt_workers.tenants import ensure_tenant
from autogpt_workers.wake import Wake

log = structlog.get_logger(__name__)

EVENT_HEADER = "X-AutoGPT-Event"
DELIVERY_HEADER = "X-AutoGPT-Delivery"
TIMESTAMP_HEADER = "X-AutoGPT-Timestamp"
SIGNATURE_HEADER = "X-AutoGPT-Signature"
USER_AGENT = "autogpt-workers-webhooks/1"


def signature(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return "v1=" + mac.hexdigest()


def verify_signature(
    secret: str, timestamp: str, body: bytes, header: str, tolerance_s: float = 300, now: float | None = None
) -> bool:
    """True when ``header`` is our signature of ``body`` at ``timestamp`` and the timestamp is recent."""
    try:
        ts = int(timestamp)
    except ValueError:
        return False
    if abs((now if now is not None else time.time()) - ts) > tolerance_s:
        return False
    return hmac.compare_digest(signature(secret, ts, body), header)


_UNFINISHED = [status.value for status in TaskStatus if not status.terminal]


def _stale_connection(exc: BaseException) -> bool:
    """The connection died under the statement: SQLAlchemy has invalidated the pool, a retry gets a fresh one."""
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


def backoff_s(attempts: int, base_s: float, max_s: float) -> float:
    delay = min(max_s, base_s * 2 ** max(0, attempts - 1))
    return delay + random.uniform(0, delay * 0.1)


@dataclasses.dataclass(frozen=True)
class Job:
    delivery_id: int
    url: str
    kind: str
    body: bytes
    secret: str
    attempts: int  # before this one


@dataclasses.dataclass(frozen=True)
class Result:
    delivery_id: int
    ok: bool
    status: int | None
    error: str | None
    permanent: bool = False


def _payload(event: TaskEvent, task: Task) -> dict[str, Any]:
    return {
        "id": f"evt_{event.id}",
        "type": event.kind,
        "task_id": str(event.task_id),
        "step_index": event.step_index,
        "created_at": event.created_at.isoformat(),
        "data": event.data,
        "task": {
            "status": task.status,
            "steps_completed": task.steps_completed,
            "error": task.error,
            "metadata": task.metadata_ or {},
        },
    }


class WebhookDispatcher:
    """Claims due deliveries and POSTs them on a thread pool; each records its own outcome when it ends, so a
    slow receiver holds one thread for at most ``webhook_timeout_s`` and never the others' deliveries."""

    def __init__(
        self, db: Database, settings: Settings, client: httpx.Client | None = None, wake: Wake | None = None
    ) -> None:
        """``wake`` (the dispatcher's): a round looks for due deliveries only while one may become due unseen (a
        task with a webhook is running: its steps write deliveries), when a retry's time comes or one in flight
        ends; without one every round looks."""
        self.db = db
        self.wake = wake
        self.settings = settings
        self.client = client or httpx.Client(
            timeout=settings.webhook_timeout_s,
            follow_redirects=False,
            headers={"User-Agent": USER_AGENT},
            limits=httpx.Limits(max_connections=settings.webhook_concurrency * 2),
        )
        self.capacity = settings.webhook_concurrency * 2
        self.pool = ThreadPoolExecutor(settings.webhook_concurrency, thread_name_prefix="webhook")
        self._lock = threading.Lock()
        self._in_flight = 0

    def deliver_round(self, limit: int = 200) -> int:
        """Claim due deliveries (as many as there is room for) and start them. Returns how many were started."""
        with self._lock:
            room = min(limit, self.capacity - self._in_flight)
        if room <= 0:
            return 0
        if self.wake is not None and not self.wake.should_look():
            return 0
        jobs, idle, due_in_s = self._claim(room)
        if self.wake is not None:
            self.wake.looked(idle=idle, due_in_s=due_in_s)
        for job in jobs:
            with self._lock:
                self._in_flight += 1
            self.pool.submit(self._run, job)
        return len(jobs)

    def in_flight(self) -> int:
        with self._lock:
            return self._in_flight

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        self.client.close()

    def _run(self, job: Job) -> None:
        try:
            self._record(job, self._post(job))
        except Exception as exc:  # the database is away: the claim's lease runs out and the delivery is retried
            log.warning("webhook_record_failed", delivery_id=job.delivery_id, error=str(exc))
        finally:
            with self._lock:
                self._in_flight -= 1
            if self.wake is not None:
                self.wake.notify()  # room again, and maybe a retry scheduled

    def _claim(self, limit: int) -> tuple[list[Job], bool, float | None]:
        """The due deliveries claimed (at most ``limit``); when none is due, whether the loop may go idle (no task
        with a webhook is unfinished, so no delivery can be written unseen) and in how many seconds the next
        pending delivery falls due (None: none is pending)."""
        now = datetime.now(UTC)
        lease = timedelta(seconds=self.settings.webhook_timeout_s * 2 + 30)
        with self.db.transaction() as s:
            rows = list(
                s.scalars(
                    select(WebhookDelivery)
                    .where(
                        WebhookDelivery.status == "pending",
                        WebhookDelivery.next_attempt_at <= now,
                        or_(WebhookDelivery.locked_until.is_(None), WebhookDelivery.locked_until < now),
                    )
                    .order_by(WebhookDelivery.next_attempt_at)
                    .limit(limit)
                    .with_for_update(skip_locked=True)
                )
            )
            jobs = []
            secrets: dict[str, str] = {}
            for d in rows:
                d.locked_until = now + lease
                task = s.get_one(Task, d.task_id)
                if d.payload is None:
                    d.payload = _payload(s.get_one(TaskEvent, d.event_id), task)
                if task.tenant_id not in secrets:
                    secrets[task.tenant_id] = self._secret(s, task.tenant_id)
                body = json.dumps(d.payload, separators=(",", ":"), sort_keys=True).encode()
                jobs.append(Job(d.id, d.url, d.payload["type"], body, secrets[task.tenant_id], d.attempts))
            if jobs:
                return jobs, False, None
            next_at = s.scalar(
                select(
                    func.min(
                        func.greatest(
                            WebhookDelivery.next_attempt_at,
                            func.coalesce(WebhookDelivery.locked_until, WebhookDelivery.next_attempt_at),
                        )
                    )
                ).where(WebhookDelivery.status == "pending")
            )
            hooked = s.scalar(
                select(
                    select(Task.id)
                    .join(TaskOptions, TaskOptions.task_id == Task.id)
                    # the unfinished statuses by name, so the tasks' status index finds them (not NOT IN)
                    .where(TaskOptions.webhook_url.is_not(None), Task.status.in_(_UNFINISHED))
                    .exists()
                )
            )
            return [], not hooked, None if next_at is None else (next_at - now).total_seconds()

    @staticmethod
    def _secret(s: Session, tenant_id: str) -> str:
        tenant = s.get(Tenant, tenant_id)
        return tenant.webhook_secret if tenant is not None else ensure_tenant(s, tenant_id).webhook_secret

    def _post(self, job: Job) -> Result:
        ts = int(time.time())
        headers = {
            "Content-Type": "application/json",
            EVENT_HEADER: job.kind,
            DELIVERY_HEADER: str(job.delivery_id),
            TIMESTAMP_HEADER: str(ts),
            SIGNATURE_HEADER: signature(job.secret, ts, job.body),
        }
        try:
            resp = self.client.post(job.url, content=job.body, headers=headers)
        except httpx.HTTPError as exc:
            return Result(job.delivery_id, False, None, f"{type(exc).__name__}: {exc}"[:500])
        if 200 <= resp.status_code < 300:
            return Result(job.delivery_id, True, resp.status_code, None)
        return Result(
            job.delivery_id, False, resp.status_code, f"HTTP {resp.status_code}", permanent=resp.status_code == 410
        )

    def _record(self, job: Job, r: Result) -> None:
        n = job.attempts + 1
        now = datetime.now(UTC)
        values: dict[str, Any] = {"attempts": n, "last_status": r.status, "last_error": r.error, "locked_until": None}
        if r.ok:
            values.update(status="delivered", delivered_at=now)
        elif r.permanent or n >= self.settings.webhook_max_attempts:
            values.update(status="dead")
            log.warning("webhook_dead", delivery_id=r.delivery_id, url=job.url, attempts=n, error=r.error)
        else:
            delay = backoff_s(n, self.settings.webhook_backoff_base_s, self.settings.webhook_backoff_max_s)
            values.update(next_attempt_at=now + timedelta(seconds=delay))
            log.info("webhook_retry", delivery_id=r.delivery_id, attempts=n, error=r.error, retry_in=round(delay, 1))
        for attempt in tenacity.Retrying(  # a stale pooled connection (PostgreSQL restarted): again on a fresh one
            retry=tenacity.retry_if_exception(_stale_connection), stop=tenacity.stop_after_attempt(3), reraise=True
        ):
            with attempt, self.db.transaction() as s:
                s.execute(update(WebhookDelivery).where(WebhookDelivery.id == r.delivery_id).values(**values))
