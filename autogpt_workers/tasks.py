"""Celery glue: decode the ids, call the runner, map the outcome to ack / dead-letter. Logic lives in ``runner``.

Both tasks are safe to receive any number of times: the ledger decides whether a delivery executes.
"""

from __future__ import annotations

import uuid

import structlog
from celery.exceptions import Reject

from autogpt_workers.celery_app import app
from autogpt_workers.contracts import ACT_TASK, THINK_TASK
from autogpt_workers.errors import StepPoisoned
from autogpt_workers.runtime import get_runner


def _run(phase: str, task_id: str, step_index: int) -> str:
    tid = uuid.UUID(str(task_id))  # a malformed message fails here and is dead-lettered
    with structlog.contextvars.bound_contextvars(task_id=str(tid), step=int(step_index), phase=phase):
        runner = get_runner()
        try:
            if phase == "think":
                return runner.think(tid, int(step_index))
            return runner.act(tid, int(step_index))
        except StepPoisoned as exc:
            raise Reject(str(exc), requeue=False) from exc


@app.task(name=THINK_TASK)
def think(task_id: str, step_index: int) -> str:
    """Step phase 1: ask the model for the next command and persist its proposal."""
    return _run("think", task_id, step_index)


@app.task(name=ACT_TASK)
def act(task_id: str, step_index: int) -> str:
    """Step phase 2: run the proposed command and commit the step."""
    return _run("act", task_id, step_index)
