"""Enqueue an agent task without HTTP: ``submit_task(...)``. The API calls the same function.

The task row, its first step and its first wake-up commit in one transaction; the wake-up is published after
commit with publisher confirms. If the broker is down the task is still accepted: the reaper publishes it later.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import threading
import uuid
import weakref
from typing import Any

import structlog
from sqlalchemy import select

from autogpt_workers import tracing
from autogpt_workers.admission import Policy, effective_priority, hold_if_capped
from autogpt_workers.broker import Publisher
from autogpt_workers.contracts import TaskSubmission
from autogpt_workers.errors import UsageError
from autogpt_workers.publish_marks import PublishMarks
from autogpt_workers.store.db import Database
from autogpt_workers.store.gateway import record_options
from autogpt_workers.store.ledger import Ledger
from autogpt_workers.store.models import Task

log = structlog.get_logger(__name__)


class IdempotencyConflict(UsageError):
    """The idempotency key was already used for a different request."""


@dataclasses.dataclass(frozen=True)
class Submitted:
    task_id: uuid.UUID
    created: bool  # False: an earlier identical submission with the same idempotency key
    published: bool  # False: accepted, the wake-up waits in the outbox for the reaper


def request_hash(submission: TaskSubmission) -> str:
    canonical = json.dumps(submission.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def submit_task(
    db: Database,
    publisher: Publisher,
    submission: TaskSubmission,
    *,
    tenant_id: str = "default",
    idempotency_key: str | None = None,
    model: str | None = None,
    source: str = "native",
    additional_input: dict[str, Any] | None = None,
    policy: Policy | None = None,
) -> Submitted:
    """Accept a task. ``policy`` (running-task caps, deadline urgency) may hold it back in the admission queue;
    without one it is admitted at once. ``source``/``additional_input`` record an Agent Protocol request."""
    ledger = Ledger(db)
    digest = request_hash(submission)
    deadline = submission.deadline
    priority = effective_priority(submission.priority, deadline, policy or Policy())
    values = {
        "tenant_id": tenant_id,
        "goal": submission.goal,
        "priority": priority,
        "budget": submission.budget.model_dump(mode="json"),
        "allowed_commands": submission.allowed_commands,
        "metadata_": submission.metadata,
        "idempotency_key": idempotency_key,
        "request_hash": digest,
        "model": model,
        "approval": submission.approval,  # the lifecycle's approval gate and deadline (revision 0004)
        "deadline": deadline,
        "traceparent": tracing.current_traceparent(),  # the steps' spans join the submitter's trace (0005)
    }
    held = None
    with db.transaction() as s:
        created = ledger.create_task(s, values)
        if created is not None:
            record_options(
                s,
                created[0],
                source=source,
                base_priority=submission.priority,
                profile=submission.profile,
                webhook_url=submission.webhook_url,
                webhook_events=submission.webhook_events,
                additional_input=additional_input,
            )
            if policy is not None:
                held = hold_if_capped(s, created[0], tenant_id, policy)
        if created is None:
            existing_id, existing_hash = s.execute(
                select(Task.id, Task.request_hash).where(
                    Task.tenant_id == tenant_id, Task.idempotency_key == idempotency_key
                )
            ).one()
    if created is None:
        if existing_hash != digest:
            raise IdempotencyConflict(
                f"idempotency key {idempotency_key!r} was already used for a different request (task {existing_id})"
            )
        return Submitted(existing_id, created=False, published=True)
    task_id, wakeup = created
    if held is not None:
        log.info("task_waiting_for_slot", task_id=str(task_id), tenant_id=tenant_id, reason=held)
        return Submitted(task_id, created=True, published=False)
    try:
        publisher.wake(task_id, 0, "think", priority)
    except Exception as exc:  # accepted all the same: the outbox row is committed
        log.warning("submit_publish_deferred", task_id=str(task_id), error=str(exc))
        return Submitted(task_id, created=True, published=False)
    _marks(db).add([wakeup.outbox_id])  # batched; a mark lost is a duplicate at worst, which the ledger ignores
    return Submitted(task_id, created=True, published=True)


_marks_lock = threading.Lock()
_marks_by_db: weakref.WeakKeyDictionary[Database, PublishMarks] = weakref.WeakKeyDictionary()


def _marks(db: Database) -> PublishMarks:
    """The process's batch of published marks for this database (one transaction every 0.2 s, not one per submit)."""
    with _marks_lock:
        marks = _marks_by_db.get(db)
        if marks is None:
            marks = _marks_by_db[db] = PublishMarks(Ledger(db).mark_published)
        return marks
