"""An Agent Protocol step request recorded before its proposal exists, honoured when the proposal lands.

``POST .../steps`` approves (an empty input or ``y``) or answers (any other input) the proposal waiting. When the
request's wait bound runs out before the workers proposed anything, the request is recorded anyway (its
``ap_step_requests`` row, for the step it asked for) and answered ``running``. A step ``awaiting_approval`` with a
recorded request is therefore one the client already answered: whoever sees it first applies the answer (the
think worker right after parking the proposal, the API when it records or polls), once: ``lifecycle.approve``
takes the step index, so a second attempt is a ``LifecycleConflict``, ignored. Applying a request moves the step
out of ``awaiting_approval`` (approved: ``proposed``; feedback: committed), so a recorded request never applies
twice.
"""

from __future__ import annotations

import contextlib
import uuid
from typing import Any

import structlog
from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert

from autogpt_workers import lifecycle
from autogpt_workers.broker import Publisher
from autogpt_workers.store.db import Database
from autogpt_workers.store.gateway import StepRequest
from autogpt_workers.store.models import Step, Task

log = structlog.get_logger(__name__)

APPROVALS = frozenset({"", "y", "yes"})


def feedback_of(text: str | None, goal: str, step_index: int) -> str | None:
    """What a request means for the proposal: None to approve it, else the feedback to give the agent. The first
    request (for step 0) may repeat the task's input, as the protocol's clients do to start: that approves too."""
    answer = (text or "").strip()
    if answer.lower() in APPROVALS or (step_index == 0 and answer == goal.strip()):
        return None
    return answer


def record(db: Database, task_id: uuid.UUID, step_index: int, text: str | None, extra: dict[str, Any]) -> None:
    """Record the request for the step (the first one recorded stands)."""
    with db.transaction() as s:
        s.execute(
            insert(StepRequest)
            .values(task_id=task_id, step_index=step_index, input=text, additional_input=extra)
            .on_conflict_do_nothing()
        )


def honour(db: Database, publisher: Publisher, task_id: uuid.UUID, step_index: int) -> bool:
    """If the step awaits approval and a request for it is recorded, apply that request. True if applied here."""
    with db.session() as s:
        row = s.execute(
            select(StepRequest.input, Task.goal)
            .join(Task, Task.id == StepRequest.task_id)
            .join(Step, (Step.task_id == StepRequest.task_id) & (Step.step_index == StepRequest.step_index))
            .where(
                StepRequest.task_id == task_id,
                StepRequest.step_index == step_index,
                Step.status == "awaiting_approval",
            )
        ).one_or_none()
    if row is None:
        return False
    text, goal = row
    with contextlib.suppress(lifecycle.LifecycleConflict):  # applied meanwhile by someone else
        lifecycle.approve(db, publisher, task_id, step_index=step_index, feedback=feedback_of(text, goal, step_index))
        log.info("recorded_step_request_applied", task_id=str(task_id), step=step_index)
        return True
    return False
