"""Read models for the API and the CLI: rows in, contract views out."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select, tuple_
from sqlalchemy.orm import Session

from autogpt_workers.agent.types import Budget
from autogpt_workers.contracts import ArtifactView, StepView, TaskView, Usage
from autogpt_workers.store.gateway import AdmissionQueue, TaskOptions
from autogpt_workers.store.models import Artifact, Step, Task


def task_view(task: Task, options: TaskOptions | None = None, waiting: bool = False) -> TaskView:
    extra: dict[str, Any] = {}
    if options is not None:
        extra = {
            "profile": options.profile,
            "webhook_url": options.webhook_url,
            "webhook_events": options.webhook_events or [],
        }
    return TaskView(
        **extra,
        allowed_commands=task.allowed_commands,
        effective_priority=task.priority,
        waiting_for_slot=waiting,
        deadline=task.deadline,
        approval=task.approval,
        id=task.id,
        status=task.status,  # type: ignore[arg-type]
        goal=task.goal,
        priority=options.base_priority if options is not None else task.priority,
        budget=Budget.model_validate(task.budget),
        steps_completed=task.steps_completed,
        usage=Usage(
            prompt_tokens=task.prompt_tokens,
            completion_tokens=task.completion_tokens,
            total_tokens=task.prompt_tokens + task.completion_tokens,
            cost_usd=round(task.cost_usd, 8),
            llm_calls=task.llm_calls,
        ),
        error=task.error,
        created_at=task.created_at,
        started_at=task.started_at,
        finished_at=task.finished_at,
        metadata=task.metadata_ or {},
    )


def step_view(step: Step) -> StepView:
    thought = None
    if step.proposal:
        thought = (step.proposal.get("assistant_message") or {}).get("content")
    return StepView(
        step_index=step.step_index,
        status=step.status,  # type: ignore[arg-type]
        command=step.command,
        arguments=step.arguments,
        thought=thought,
        output=step.output,
        is_error=step.is_error,
        is_last=step.is_last,
        error=step.error,
        prompt_tokens=step.prompt_tokens,
        completion_tokens=step.completion_tokens,
        cost_usd=step.cost_usd,
        deliveries=step.deliveries,
        created_at=step.created_at,
        committed_at=step.committed_at,
    )


def get_task(s: Session, task_id: uuid.UUID, tenant_id: str | None = None) -> Task | None:
    task = s.get(Task, task_id)
    if task is None or (tenant_id is not None and task.tenant_id != tenant_id):
        return None
    return task


def list_steps(s: Session, task_id: uuid.UUID) -> list[Step]:
    return list(s.scalars(select(Step).where(Step.task_id == task_id).order_by(Step.step_index)))


def list_artifacts(s: Session, task_id: uuid.UUID) -> list[ArtifactView]:
    rows = s.scalars(select(Artifact).where(Artifact.task_id == task_id).order_by(Artifact.relative_path))
    return [
        ArtifactView(
            artifact_id=a.id,
            relative_path=a.relative_path,
            size_bytes=a.size_bytes,
            step_index=a.step_index,
            created_at=a.created_at,
        )
        for a in rows
    ]


def load_task_view(s: Session, task_id: uuid.UUID, tenant_id: str | None = None) -> TaskView | None:
    task = get_task(s, task_id, tenant_id)
    if task is None:
        return None
    waiting = s.get(AdmissionQueue, task_id) is not None
    return task_view(task, s.get(TaskOptions, task_id), waiting)


def encode_cursor(created_at: datetime, task_id: uuid.UUID) -> str:
    return base64.urlsafe_b64encode(f"{created_at.isoformat()}|{task_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    """Raises ``ValueError`` for anything ``encode_cursor`` did not make."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        at, _, tid = raw.partition("|")
        return datetime.fromisoformat(at), uuid.UUID(tid)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError("malformed cursor: pass back the next_cursor of the previous page") from exc


def list_task_views(
    s: Session, tenant_id: str, statuses: Sequence[str] = (), limit: int = 50, cursor: str | None = None
) -> tuple[list[TaskView], str | None]:
    """The tenant's tasks, newest first, ``limit`` at a time; returns (page, cursor of the next page or None)."""
    stmt = select(Task).where(Task.tenant_id == tenant_id)
    if statuses:
        stmt = stmt.where(Task.status.in_(list(statuses)))
    if cursor is not None:
        stmt = stmt.where(tuple_(Task.created_at, Task.id) < tuple_(*decode_cursor(cursor)))
    tasks = list(s.scalars(stmt.order_by(Task.created_at.desc(), Task.id.desc()).limit(limit + 1)))
    more = len(tasks) > limit
    tasks = tasks[:limit]
    ids = [t.id for t in tasks]
    options = {o.task_id: o for o in s.scalars(select(TaskOptions).where(TaskOptions.task_id.in_(ids)))}
    waiting = set(s.scalars(select(AdmissionQueue.task_id).where(AdmissionQueue.task_id.in_(ids))))
    views = [task_view(t, options.get(t.id), t.id in waiting) for t in tasks]
    next_cursor = encode_cursor(tasks[-1].created_at, tasks[-1].id) if more else None
    return views, next_cursor
