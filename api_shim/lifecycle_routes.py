"""Native lifecycle routes: ``POST /v1/tasks/{task_id}/cancel``, ``/pause``, ``/resume``, ``/approve``.

Thin: each calls ``autogpt_workers.lifecycle`` with the caller's tenant (``request.state.tenant_id``, set by the
API-key middleware) and answers the task's status after the call. ``TaskNotFound`` -> 404 (also for another
tenant's task), ``LifecycleConflict`` -> 409 (e.g. resume a task that is not paused, approve with nothing waiting).
"""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field, model_validator

from api_shim.storable import unstorable
from autogpt_workers import lifecycle
from autogpt_workers.broker import Publisher
from autogpt_workers.store.db import Database

router = APIRouter(tags=["lifecycle"])

RESPONSES: dict[int | str, dict[str, Any]] = {
    404: {"description": "No such task (or not this tenant's)."},
    409: {"description": "The task's state does not allow this now."},
}


class LifecycleResult(BaseModel):
    task_id: uuid.UUID
    status: str = Field(description="The task's status after the call.")


class ApproveRequest(BaseModel):
    """Approve the step waiting (empty body), edit its command before it runs, or answer it with feedback (its
    command does not run; the feedback is what the agent reads next)."""

    model_config = ConfigDict(extra="forbid")

    step_index: int | None = Field(default=None, ge=0, description="Only if this is the step waiting.")
    command: str | None = Field(default=None, min_length=1, max_length=128, description="Run this command instead.")
    arguments: dict[str, Any] | None = Field(default=None, description="With these arguments instead.")
    feedback: str | None = Field(default=None, min_length=1, max_length=20_000, description="Do not run; say this.")

    @model_validator(mode="after")
    def _one_decision(self) -> ApproveRequest:
        if self.feedback is not None and (self.command is not None or self.arguments is not None):
            raise ValueError("give either feedback or an edited command/arguments, not both")
        for name in ("command", "arguments", "feedback"):
            why = unstorable(getattr(self, name))
            if why:
                raise ValueError(f"{name} {why}")
        return self


def _call(request: Request, task_id: uuid.UUID, op: Any, **kwargs: Any) -> LifecycleResult:
    db: Database = request.app.state.db
    publisher: Publisher = request.app.state.publisher
    tenant_id = getattr(request.state, "tenant_id", None)
    try:
        status = op(db, publisher, task_id, tenant_id=tenant_id, **kwargs)
    except lifecycle.TaskNotFound as exc:
        raise HTTPException(status_code=404, detail=str(exc)) from exc
    except lifecycle.LifecycleConflict as exc:
        raise HTTPException(status_code=409, detail=str(exc)) from exc
    return LifecycleResult(task_id=task_id, status=status)


@router.post("/v1/tasks/{task_id}/cancel", response_model=LifecycleResult, responses=RESPONSES)
def cancel_task(task_id: uuid.UUID, request: Request) -> LifecycleResult:
    """Cancel: ``cancelled`` at once, or ``cancelling`` until the step in flight stops at its next safe point."""
    return _call(request, task_id, lifecycle.cancel)


@router.post("/v1/tasks/{task_id}/pause", response_model=LifecycleResult, responses=RESPONSES)
def pause_task(task_id: uuid.UUID, request: Request) -> LifecycleResult:
    """Pause: no new phase starts (the one in flight finishes and is kept); the worker slot is freed."""
    return _call(request, task_id, lifecycle.pause)


@router.post("/v1/tasks/{task_id}/resume", response_model=LifecycleResult, responses=RESPONSES)
def resume_task(task_id: uuid.UUID, request: Request) -> LifecycleResult:
    """Resume a paused task from its last committed step."""
    return _call(request, task_id, lifecycle.resume)


@router.post("/v1/tasks/{task_id}/approve", response_model=LifecycleResult, responses=RESPONSES)
def approve_step(task_id: uuid.UUID, request: Request, body: ApproveRequest | None = None) -> LifecycleResult:
    """Release the step awaiting approval: as proposed, edited, or answered with feedback."""
    body = body or ApproveRequest()
    return _call(
        request,
        task_id,
        lifecycle.approve,
        step_index=body.step_index,
        command=body.command,
        arguments=body.arguments,
        feedback=body.feedback,
    )
