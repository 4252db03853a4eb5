"""Reads of the task event log (``task_events``) for live streams: what happened after a given event id."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from autogpt_workers.store.models import TaskEvent

# after one of these nothing more happens to a task, so a stream of its events may end
FINAL_KINDS = frozenset({"task.completed", "task.failed", "task.cancelled"})


def events_after(s: Session, task_id: uuid.UUID, after_id: int = 0, limit: int = 500) -> list[TaskEvent]:
    """The task's events with ``id > after_id``, oldest first."""
    return list(
        s.scalars(
            select(TaskEvent)
            .where(TaskEvent.task_id == task_id, TaskEvent.id > after_id)
            .order_by(TaskEvent.id)
            .limit(limit)
        )
    )


def event_body(event: TaskEvent) -> dict[str, Any]:
    """The JSON an event is shown as (SSE ``data``)."""
    return {
        "id": event.id,
        "type": event.kind,
        "task_id": str(event.task_id),
        "step_index": event.step_index,
        "created_at": event.created_at.isoformat(),
        "data": event.data,
    }
