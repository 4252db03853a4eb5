"""Read models for the API and the CLI: rows in, contract views out."""

from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.orm import Session

from autogpt_workers.agent.types import Budget
from autogpt_workers.contracts import ArtifactView, StepView, TaskView, Usage
from autogpt_workers.store.models import Artifact, Step, Task


def task_view(task: Task) -> TaskView:
    return TaskView(
        id=task.id,
        status=task.status,  # type: ignore[arg-type]
        goal=task.goal,
        priority=task.priority,
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
