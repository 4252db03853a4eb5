"""Celery glue: decode the ids, call the runner, map the outcome to ack / retry / dead-letter. Logic lives in
``runner``.

Both tasks are safe to receive any number of times: the ledger decides whether a delivery executes.

- ``StepPoisoned`` (too many deliveries without a commit) -> ``Reject(requeue=False)``: dead-lettered.
- PostgreSQL unreachable (restarting, failing over) -> the wake-up is retried later (Celery ``retry``: a new
  message with a countdown, then the ack), so a database outage loses no wake-up. A claimed step whose writes
  failed keeps its lease until it expires, then the reaper re-drives it.
- Anything else -> the message is dead-lettered (``task_acks_on_failure_or_timeout=False``); the reaper re-drives
  the step (expired lease, or a wake-up published but never consumed).
"""

from __future__ import annotations

import random
import uuid
from typing import Any

import structlog
from celery.exceptions import Reject
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from autogpt_workers.celery_app import app
from autogpt_workers.contracts import ACT_TASK, THINK_TASK
from autogpt_workers.errors import StepPoisoned
from autogpt_workers.runtime import get_runner

log = structlog.get_logger(__name__)

DB_RETRY_MAX = 120  # about 10 minutes of countdowns before the message is dead-lettered (the reaper is the net)


def _database_down(exc: BaseException) -> bool:
    if isinstance(exc, OperationalError | InterfaceError):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


def _run(task: Any, phase: str, task_id: str, step_index: int) -> str:
    tid = uuid.UUID(str(task_id))  # a malformed message fails here and is dead-lettered
    with structlog.contextvars.bound_contextvars(task_id=str(tid), step=int(step_index), phase=phase):
        runner = get_runner()
        try:
            if phase == "think":
                return runner.think(tid, int(step_index))
            return runner.act(tid, int(step_index))
        except StepPoisoned as exc:
            raise Reject(str(exc), requeue=False) from exc
        except Exception as exc:
            if not _database_down(exc):
                raise
            countdown = min(10.0, 0.5 * 2 ** min(task.request.retries, 5)) + random.uniform(0, 1)
            log.warning("database_unavailable", error=str(exc).splitlines()[0], retry_in=round(countdown, 1))
            raise task.retry(countdown=countdown, max_retries=DB_RETRY_MAX) from exc


@app.task(name=THINK_TASK, bind=True)
def think(self: Any, task_id: str, step_index: int) -> str:
    """Step phase 1: ask the model for the next command and persist its proposal."""
    return _run(self, "think", task_id, step_index)


@app.task(name=ACT_TASK, bind=True)
def act(self: Any, task_id: str, step_index: int) -> str:
    """Step phase 2: run the proposed command and commit the step."""
    return _run(self, "act", task_id, step_index)
