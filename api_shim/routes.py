"""Native API routes (``/v1``)."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Header, HTTPException, Request, Response
from fastapi.concurrency import run_in_threadpool

from autogpt_workers.contracts import ArtifactView, StepView, TaskSubmission, TaskView
from autogpt_workers.store import queries
from autogpt_workers.store.db import Database
from autogpt_workers.submit import submit_task

router = APIRouter()

NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "No such task."}}


def _db(request: Request) -> Database:
    db: Database = request.app.state.db
    return db


def _load_task(db: Database, task_id: uuid.UUID) -> TaskView:
    with db.session() as s:
        task = queries.get_task(s, task_id)
        if task is None:
            raise HTTPException(status_code=404, detail=f"task {task_id} not found")
        return queries.task_view(task)


@router.get("/healthz", tags=["ops"])
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.post(
    "/v1/tasks",
    response_model=TaskView,
    status_code=201,
    tags=["tasks"],
    responses={200: {"model": TaskView, "description": "Same idempotency key and body: the existing task."},
               409: {"description": "Idempotency key reused with a different body."}},
)
async def create_task(
    body: TaskSubmission,
    request: Request,
    response: Response,
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
) -> TaskView:
    """Accept a task: returns once the task and its first wake-up are committed."""
    db = _db(request)
    settings = request.app.state.settings
    result = await run_in_threadpool(
        submit_task,
        db,
        request.app.state.publisher,
        body,
        idempotency_key=idempotency_key,
        model=settings.llm_model,
    )
    if not result.created:
        response.status_code = 200
    response.headers["Location"] = f"/v1/tasks/{result.task_id}"
    return await run_in_threadpool(_load_task, db, result.task_id)


@router.get("/v1/tasks/{task_id}", response_model=TaskView, responses=NOT_FOUND, tags=["tasks"])
def get_task(task_id: uuid.UUID, request: Request) -> TaskView:
    return _load_task(_db(request), task_id)


@router.get("/v1/tasks/{task_id}/steps", response_model=list[StepView], responses=NOT_FOUND, tags=["tasks"])
def get_steps(task_id: uuid.UUID, request: Request) -> list[StepView]:
    db = _db(request)
    with db.session() as s:
        if queries.get_task(s, task_id) is None:
            raise HTTPException(status_code=404, detail=f"task {task_id} not found")
        return [queries.step_view(st) for st in queries.list_steps(s, task_id)]


@router.get(
    "/v1/tasks/{task_id}/artifacts", response_model=list[ArtifactView], responses=NOT_FOUND, tags=["tasks"]
)
def get_artifacts(task_id: uuid.UUID, request: Request) -> list[ArtifactView]:
    db = _db(request)
    with db.session() as s:
        if queries.get_task(s, task_id) is None:
            raise HTTPException(status_code=404, detail=f"task {task_id} not found")
        return queries.list_artifacts(s, task_id)
