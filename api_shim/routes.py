"""Native API routes (``/v1``): submit, list, read. Every query is scoped to the caller's tenant (``auth.Gate``):
another tenant's task answers 404, exactly like a task that does not exist."""

from __future__ import annotations

import functools
import json
import uuid
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

from anyio import CapacityLimiter, to_thread
from fastapi import APIRouter, Header, HTTPException, Query, Request, Response
from fastapi.exceptions import RequestValidationError

from api_shim.auth import tenant_of
from api_shim.storable import plainly_storable, unstorable
from api_shim.submit_on_loop import submit_on_loop
from autogpt_workers import tracing
from autogpt_workers.admission import Policy
from autogpt_workers.config import Settings
from autogpt_workers.contracts import ArtifactView, StepView, TaskPage, TaskStatus, TaskSubmission, TaskView
from autogpt_workers.profiles import ProfileCatalog, UnknownProfile
from autogpt_workers.store import queries
from autogpt_workers.store.db import Database
from autogpt_workers.submit import Submitted, submit_task

T = TypeVar("T")
MAX_IDEMPOTENCY_KEY = 255

NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "No such task (for this tenant)."}}


def db_of(request: Request) -> Database:
    db: Database = request.app.state.db
    return db


def db_limiter(state: Any, settings: Settings) -> CapacityLimiter:
    """The threads that may run a submit's database work at once (``state`` is the app's): as many as the pool has
    connections. More threads would only wait for a connection (or open one beyond the pool and close it again)
    while holding the GIL away from the event loop; requests beyond it wait in the event loop instead."""
    limiter: CapacityLimiter | None = getattr(state, "db_limiter", None)
    if limiter is None:
        limiter = state.db_limiter = CapacityLimiter(settings.api_db_pool_size)
    return limiter


def json_size(value: Any) -> int:
    return len(json.dumps(value, separators=(",", ":"), default=str).encode())


def unprocessable(where: tuple[str, ...], message: str) -> RequestValidationError:
    """A 422 in FastAPI's own shape (``{"detail": [{"loc", "msg", "type"}]}``), as the OpenAPI document says."""
    return RequestValidationError([{"type": "value_error", "loc": where, "msg": message, "input": None}])


def _load_task(db: Database, task_id: uuid.UUID, tenant_id: str) -> TaskView:
    with db.session() as s:
        view = queries.load_task_view(s, task_id, tenant_id)
    if view is None:
        raise HTTPException(status_code=404, detail=f"task {task_id} not found")
    return view


def _check_limits(submission: TaskSubmission, settings: Settings, body: bytes | None = None) -> None:
    if len(submission.goal) > settings.max_goal_chars:
        limit = settings.max_goal_chars
        raise unprocessable(("body", "goal"), f"goal is {len(submission.goal)} characters; the limit is {limit}")
    if body is None or not plainly_storable(body):
        # the fields' own values: a JSON-mode dump replaced an unpaired surrogate in a dict's key (PostgreSQL then
        # refused the task's row: a 503 where a 422 is due), and a dump of any mode stops at pydantic's depth limit
        for field in TaskSubmission.model_fields:
            why = unstorable(getattr(submission, field))
            if why:
                raise unprocessable(("body", field), f"{field} {why}")
    if json_size(submission.metadata) > settings.api_max_input_bytes:
        raise unprocessable(
            ("body", "metadata"), f"metadata is larger than {settings.api_max_input_bytes} bytes as JSON"
        )


class SubmitEndpoint:
    """``POST /v1/tasks`` once its body is a valid ``TaskSubmission``: the route below, and the gate's fast path
    (``fast_submit``), answer through this one object, so both answer alike."""

    path = "/v1/tasks"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.policy = Policy.from_settings(settings)
        self.profiles = ProfileCatalog(settings.profiles_dir)

    def check(self, body: TaskSubmission, raw: bytes | None = None) -> None:
        """Raises the 422 of a body past the platform's limits (before anything is written). ``raw``: the request's
        bytes, as parsed by ``storable.loads``; when ``storable.plainly_storable`` clears them, the walk of every
        value for what PostgreSQL cannot store is spared."""
        _check_limits(body, self.settings, raw)

    async def answer(self, state: Any, body: TaskSubmission, tenant: str, idempotency_key: str | None) -> Response:
        """Accept ``body`` (checked) for ``tenant``; ``state`` is the app's. Errors are raised for the app's
        exception handlers (409, 422, 503)."""
        settings, policy, profiles = self.settings, self.policy, self.profiles
        db: Database = state.db
        publisher = state.publisher
        background = state.background_publisher
        group = state.submit_group
        limiter = db_limiter(state, settings)

        def run_sync(fn: Callable[[], T]) -> Awaitable[T]:
            return to_thread.run_sync(fn, limiter=limiter)

        def submit() -> tuple[Submitted, TaskView]:
            result = submit_task(
                db,
                publisher,
                body,
                tenant_id=tenant,
                idempotency_key=idempotency_key,
                model=settings.llm_model,
                policy=policy,
                background=background,
                profiles=profiles,
                group=group,
            )
            # a new task is answered as committed; an earlier one (same idempotency key) as it is now
            return result, result.view or _load_task(db, result.task_id, tenant)

        with tracing.submit_span(tenant) as span:  # its context is stored with the task
            try:
                if group is not None and body.profile is None:  # no thread of its own (submit_on_loop)
                    result = await submit_on_loop(
                        db, publisher, body, group=group, run_sync=run_sync, tenant_id=tenant,
                        idempotency_key=idempotency_key, model=settings.llm_model, policy=policy,
                        background=background,
                    )  # fmt: skip
                    # a new task is answered as committed; an earlier one (same idempotency key) as it is now
                    load = functools.partial(_load_task, db, result.task_id, tenant)
                    view = result.view if result.view is not None else await run_sync(load)
                else:
                    result, view = await run_sync(submit)
            except UnknownProfile as exc:  # nothing was written
                raise unprocessable(("body", "profile"), str(exc)) from exc
            if span is not None:
                span.set_attributes({"autogpt.task_id": str(result.task_id), "autogpt.created": result.created})
        # answered as FastAPI would from the response model (a TaskView is one already), without its second pass
        return Response(
            view.model_dump_json(),
            status_code=201 if result.created else 200,
            headers={"Location": f"/v1/tasks/{result.task_id}"},
            media_type="application/json",
        )


def make_router(settings: Settings, submit_endpoint: SubmitEndpoint | None = None) -> APIRouter:
    router = APIRouter()
    endpoint = submit_endpoint or SubmitEndpoint(settings)

    @router.get("/healthz", tags=["ops"])
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @router.post(
        endpoint.path,
        response_model=TaskView,
        status_code=201,
        tags=["tasks"],
        responses={
            200: {"model": TaskView, "description": "Same idempotency key and body: the existing task."},
            409: {"description": "Idempotency key reused with a different body."},
        },
    )
    async def create_task(
        body: TaskSubmission,
        request: Request,
        idempotency_key: Annotated[str | None, Header(max_length=MAX_IDEMPOTENCY_KEY)] = None,
    ) -> Response:
        """Accept a task: returns once the task and its first wake-up are committed (or, over a running-task
        cap, once it waits in the admission queue: ``waiting_for_slot``)."""
        endpoint.check(body)
        return await endpoint.answer(request.app.state, body, tenant_of(request), idempotency_key)

    @router.get("/v1/tasks", response_model=TaskPage, tags=["tasks"])
    def list_tasks(
        request: Request,
        status: Annotated[list[TaskStatus] | None, Query(description="Only these statuses (repeatable).")] = None,
        limit: int = Query(50, ge=1, le=settings.api_max_page_size, description="Tasks per page."),
        cursor: Annotated[str | None, Query(max_length=200, description="next_cursor of the previous page")] = None,
    ) -> TaskPage:
        """The tenant's tasks, newest first, a page at a time (cursor pagination: stable while tasks arrive)."""
        with db_of(request).session() as s:
            try:
                tasks, next_cursor = queries.list_task_views(
                    s, tenant_of(request), [st.value for st in status or []], limit, cursor
                )
            except ValueError as exc:
                raise unprocessable(("query", "cursor"), str(exc)) from exc
        return TaskPage(tasks=tasks, next_cursor=next_cursor)

    @router.get("/v1/tasks/{task_id}", response_model=TaskView, responses=NOT_FOUND, tags=["tasks"])
    def get_task(task_id: uuid.UUID, request: Request) -> TaskView:
        return _load_task(db_of(request), task_id, tenant_of(request))

    @router.get("/v1/tasks/{task_id}/steps", response_model=list[StepView], responses=NOT_FOUND, tags=["tasks"])
    def get_steps(task_id: uuid.UUID, request: Request) -> list[StepView]:
        with db_of(request).session() as s:
            if queries.get_task(s, task_id, tenant_of(request)) is None:
                raise HTTPException(status_code=404, detail=f"task {task_id} not found")
            return [queries.step_view(st) for st in queries.list_steps(s, task_id)]

    @router.get("/v1/tasks/{task_id}/artifacts", response_model=list[ArtifactView], responses=NOT_FOUND, tags=["tasks"])
    def get_artifacts(task_id: uuid.UUID, request: Request) -> list[ArtifactView]:
        with db_of(request).session() as s:
            if queries.get_task(s, task_id, tenant_of(request)) is None:
                raise HTTPException(status_code=404, detail=f"task {task_id} not found")
            return queries.list_artifacts(s, task_id)

    return router
