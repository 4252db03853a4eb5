"""Agent Protocol v1 under ``/ap/v1`` (tasks, steps, artifacts), on the same ledger as the native API.

Ids: a task's ``task_id`` is its native id; a step's ``step_id`` is a UUID derived from (task id, step index), so it
is stable and needs no table; an artifact's ``artifact_id`` is its row's id. Unknown ids, malformed ids and ids of
another tenant all answer 404 ``{"message": ...}``. Lists page by ``current_page`` / ``page_size``.
"""

from __future__ import annotations

import contextlib
import json
import math
import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import quote

from fastapi import APIRouter, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.responses import StreamingResponse
from sqlalchemy import Select, func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool

from api_shim import ap_models as ap
from api_shim import ap_steps, uploads
from api_shim.auth import tenant_of
from api_shim.routes import db_of, json_size
from api_shim.storable import unstorable
from autogpt_workers import tracing
from autogpt_workers.admission import Policy
from autogpt_workers.artifacts import ArtifactNotFound, ArtifactStoreError, artifact_store
from autogpt_workers.config import Settings
from autogpt_workers.contracts import TaskSubmission
from autogpt_workers.profiles import NAME_PATTERN as PROFILE_NAME
from autogpt_workers.profiles import ProfileCatalog, UnknownProfile
from autogpt_workers.store import queries
from autogpt_workers.store.db import Database
from autogpt_workers.store.gateway import StepRequest, TaskOptions
from autogpt_workers.store.ledger import TERMINAL_TASK, emit
from autogpt_workers.store.models import Artifact, Step, Task
from autogpt_workers.submit import submit_task

STEP_NAMESPACE = uuid.UUID("5b0d7d0e-8f5e-4a43-9f2a-0e6c2f1b7a11")
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": ap.NotFound, "description": "Unknown id."}}
UNPROCESSABLE: dict[int | str, dict[str, Any]] = {422: {"description": "Invalid request."}}
ENDED: dict[int | str, dict[str, Any]] = {
    409: {
        "model": ap.NotFound,
        "description": "The task ended (cancelled) before its first step: no step to run; or an edited command was "
        "sent while no proposal waits for approval.",
    }
}
TAGS: list[str | Any] = ["agent"]
Row = TypeVar("Row")


def make_step_id(task_id: uuid.UUID, step_index: int) -> str:
    return str(uuid.uuid5(STEP_NAMESPACE, f"{task_id}/{step_index}"))


def _uuid(value: str, what: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise HTTPException(404, f"{what} {value!r} not found") from None


def _task(s: Session, task_id: str, tenant: str) -> Task:
    task = queries.get_task(s, _uuid(task_id, "task"), tenant)
    if task is None:
        raise HTTPException(404, f"task {task_id!r} not found")
    return task


def _pagination(total: int, current_page: int, page_size: int) -> ap.Pagination:
    return ap.Pagination(
        total_items=total,
        total_pages=math.ceil(total / page_size),
        current_page=current_page,
        page_size=page_size,
    )


def _page(s: Session, stmt: Select[Row], total: int, current_page: int, page_size: int) -> list[Row]:
    """One page of ``stmt``; a page past the end is empty without asking the database."""
    offset = (current_page - 1) * page_size
    if offset >= total:
        return []
    return list(s.scalars(stmt.offset(offset).limit(page_size)))


def _check_storable(text: str | None, extra: dict[str, Any]) -> None:
    for name, value in (("input", text), ("additional_input", extra)):
        why = unstorable(value)
        if why:
            raise HTTPException(422, f"{name} {why}")


@contextlib.contextmanager
def _unknown_profile_is_422() -> Iterator[None]:
    try:
        yield
    except UnknownProfile as exc:  # nothing was written
        raise HTTPException(422, f"additional_input.profile: {exc}") from exc


def _artifact(a: Artifact) -> ap.Artifact:
    return ap.Artifact(
        artifact_id=str(a.id),
        agent_created=a.step_index is not None,
        file_name=a.relative_path.rsplit("/", 1)[-1],
        relative_path=a.relative_path,
        created_at=a.created_at,
        modified_at=a.modified_at,
    )


def _task_view(task: Task, options: TaskOptions | None, artifacts: list[Artifact]) -> ap.Task:
    return ap.Task(
        task_id=str(task.id),
        input=task.goal,
        additional_input=(options.additional_input if options is not None else None) or {},
        artifacts=[_artifact(a) for a in artifacts],
        created_at=task.created_at,
        modified_at=task.updated_at,
    )


def _modified(step: Step) -> datetime:
    times = [step.committed_at, step.act_started_at, step.proposed_at, step.think_started_at, step.created_at]
    return max(t for t in times if t is not None)


def _step_view(
    task: Task, step: Step, request: StepRequest | None, artifacts: list[Artifact], awaiting: int | None
) -> ap.Step:
    committed = step.status in ap_steps.COMMITTED
    waits = awaiting == step.step_index
    status: Literal["created", "running", "completed"] = "running"
    if committed:
        status = "completed"
    elif request is None and (step.status == "pending" or waits):  # with a request it is under way (preapproval)
        status = "created"
    thought = ((step.proposal or {}).get("assistant_message") or {}).get("content")
    if committed:
        output = step.output if step.output is not None else step.error
    elif step.command is not None:
        args = json.dumps(step.arguments or {}, ensure_ascii=False)
        output = f"{thought or ''}\nProposed: {step.command}({args})".strip()
    else:
        output = None
    return ap.Step(
        task_id=str(task.id),
        step_id=make_step_id(task.id, step.step_index),
        name=step.command,
        status=status,
        input=request.input if request is not None else None,
        additional_input=(request.additional_input if request is not None else None) or {},
        output=output,
        additional_output={
            "step_index": step.step_index,
            "ledger_status": step.status,
            "awaiting_approval": waits,
            "command": step.command,
            "arguments": step.arguments,
            "thought": thought,
            "is_error": step.is_error,
            "error": step.error,
            "prompt_tokens": step.prompt_tokens,
            "completion_tokens": step.completion_tokens,
            "cost_usd": step.cost_usd,
            "task_status": task.status,
        },
        artifacts=[_artifact(a) for a in artifacts],
        is_last=step.is_last,
        created_at=step.created_at,
        modified_at=_modified(step),
    )


def _steps(db: Database, task: Task, steps: list[Step]) -> list[ap.Step]:
    """AP views of ``steps``; once the task has ended its last step says ``is_last`` (even if it failed)."""
    indexes = [st.step_index for st in steps]
    with db.session() as s:
        requests = {
            r.step_index: r
            for r in s.scalars(
                select(StepRequest).where(StepRequest.task_id == task.id, StepRequest.step_index.in_(indexes))
            )
        }
        artifacts = list(
            s.scalars(
                select(Artifact)
                .where(Artifact.task_id == task.id, Artifact.step_index.in_(indexes))
                .order_by(Artifact.relative_path)
            )
        )
    awaiting = ap_steps.awaiting_step(db, task.id) if task.status not in TERMINAL_TASK else None
    with db.session() as s:
        last = s.execute(select(func.max(Step.step_index)).where(Step.task_id == task.id)).scalar_one()
    views = []
    for st in steps:
        view = _step_view(
            task, st, requests.get(st.step_index), [a for a in artifacts if a.step_index == st.step_index], awaiting
        )
        if task.status in TERMINAL_TASK and st.step_index == last:
            view.is_last = True
        views.append(view)
    return views


def make_router(settings: Settings) -> APIRouter:
    router = APIRouter(prefix="/ap/v1/agent")
    max_page = settings.api_max_page_size
    store = artifact_store(settings)  # the workers' store (local directory or S3): uploads and downloads go there
    profiles = ProfileCatalog(settings.profiles_dir)

    @router.post("/tasks", response_model=ap.Task, tags=TAGS, responses=UNPROCESSABLE)
    async def create_agent_task(request: Request, body: ap.TaskRequestBody) -> ap.Task:
        """Creates a task for the agent (step by step unless ``additional_input.mode`` is ``continuous``)."""
        text = body.input
        extra = body.additional_input or {}
        if not text.strip():
            raise HTTPException(422, "input is required: what should the agent do?")
        _check_storable(text, extra)
        if len(text) > settings.max_goal_chars:
            raise HTTPException(422, f"input is {len(text)} characters; the limit is {settings.max_goal_chars}")
        if json_size(extra) > settings.api_max_input_bytes:
            raise HTTPException(422, f"additional_input is larger than {settings.api_max_input_bytes} bytes as JSON")
        fields: dict[str, Any] = {"goal": text}
        if not ap_steps.continuous(extra):  # step by step: every proposal waits; continuous: the profile's classes
            fields["approval"] = "always"
        profile = extra.get("profile")
        if profile is not None:
            if not isinstance(profile, str) or not PROFILE_NAME.match(profile):
                raise HTTPException(422, "additional_input.profile must be a profile's name (a string of letters, "
                                    "digits, '.', '_' or '-', at most 64)")
            fields["profile"] = profile
        submission = TaskSubmission(**fields)
        tenant = tenant_of(request)
        db = db_of(request)
        with tracing.submit_span(tenant), _unknown_profile_is_422():  # its context is stored with the task
            result = await run_in_threadpool(
                submit_task,
                db,
                request.app.state.publisher,
                submission,
                tenant_id=tenant,
                model=settings.llm_model,
                source="ap",
                additional_input=extra,
                policy=Policy.from_settings(settings),
                profiles=profiles,
                group=request.app.state.submit_group,
            )

        def load() -> ap.Task:
            with db.session() as s:
                task = s.get_one(Task, result.task_id)
                return _task_view(task, s.get(TaskOptions, task.id), [])

        return await run_in_threadpool(load)

    @router.get("/tasks", response_model=ap.TaskListResponse, tags=TAGS)
    def list_agent_tasks(
        request: Request,
        current_page: int = Query(1, ge=1, description="Page number"),
        page_size: int = Query(10, ge=1, le=max_page, description="Number of items per page"),
    ) -> ap.TaskListResponse:
        """List all tasks that have been created for the agent (this tenant's), oldest first."""
        tenant = tenant_of(request)
        with db_of(request).session() as s:
            total = s.execute(select(func.count()).select_from(Task).where(Task.tenant_id == tenant)).scalar_one()
            stmt = select(Task).where(Task.tenant_id == tenant).order_by(Task.created_at, Task.id)
            tasks = _page(s, stmt, total, current_page, page_size)
            ids = [t.id for t in tasks]
            options = {o.task_id: o for o in s.scalars(select(TaskOptions).where(TaskOptions.task_id.in_(ids)))}
            artifacts = list(
                s.scalars(select(Artifact).where(Artifact.task_id.in_(ids)).order_by(Artifact.relative_path))
            )
        views = [_task_view(t, options.get(t.id), [a for a in artifacts if a.task_id == t.id]) for t in tasks]
        return ap.TaskListResponse(tasks=views, pagination=_pagination(total, current_page, page_size))

    @router.get("/tasks/{task_id}", response_model=ap.Task, tags=TAGS, responses=NOT_FOUND)
    def get_agent_task(task_id: str, request: Request) -> ap.Task:
        """Get details about a specified agent task."""
        with db_of(request).session() as s:
            task = _task(s, task_id, tenant_of(request))
            artifacts = list(
                s.scalars(select(Artifact).where(Artifact.task_id == task.id).order_by(Artifact.relative_path))
            )
            return _task_view(task, s.get(TaskOptions, task.id), artifacts)

    @router.get("/tasks/{task_id}/steps", response_model=ap.TaskStepsListResponse, tags=TAGS, responses=NOT_FOUND)
    def list_agent_task_steps(
        task_id: str,
        request: Request,
        current_page: int = Query(1, ge=1, description="Page number"),
        page_size: int = Query(10, ge=1, le=max_page, description="Number of items per page"),
    ) -> ap.TaskStepsListResponse:
        """List the task's steps, in order."""
        db = db_of(request)
        with db.session() as s:
            task = _task(s, task_id, tenant_of(request))
            total = s.execute(select(func.count()).select_from(Step).where(Step.task_id == task.id)).scalar_one()
            stmt = select(Step).where(Step.task_id == task.id).order_by(Step.step_index)
            steps = _page(s, stmt, total, current_page, page_size)
        return ap.TaskStepsListResponse(
            steps=_steps(db, task, steps), pagination=_pagination(total, current_page, page_size)
        )

    @router.post(
        "/tasks/{task_id}/steps", response_model=ap.Step, tags=TAGS, responses={**NOT_FOUND, **UNPROCESSABLE, **ENDED}
    )
    async def execute_agent_task_step(
        task_id: str, request: Request, body: ap.StepRequestBody | None = None
    ) -> ap.Step:
        """Execute a step: approve (empty or "y"), edit (``additional_input``: ``command``, ``arguments``) or answer
        (any other input) the proposal waiting, wait for the step to be done (at most ``ap_step_wait_s``; then it
        answers with status ``running``) and return it."""
        db = db_of(request)
        tenant = tenant_of(request)
        text = body.input if body else None
        extra = (body.additional_input if body else None) or {}
        _check_storable(text, extra)
        if text is not None and len(text) > settings.max_goal_chars:
            raise HTTPException(422, f"input is {len(text)} characters; the limit is {settings.max_goal_chars}")
        if json_size(extra) > settings.api_max_input_bytes:
            raise HTTPException(422, f"additional_input is larger than {settings.api_max_input_bytes} bytes as JSON")

        try:
            edit = ap_steps.edit_of(extra)
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from exc

        def find() -> tuple[uuid.UUID, str]:
            with db.session() as s:
                task = _task(s, task_id, tenant)
                return task.id, task.goal

        tid, goal = await run_in_threadpool(find)
        if edit is not None and not ap_steps.is_approval(text, goal):
            raise HTTPException(422, "give either feedback (input) or an edited command (additional_input), not both")
        try:
            index = await ap_steps.execute_step(
                db, request.app.state.publisher, tid, tenant, text, extra, settings.ap_step_wait_s
            )
        except ap_steps.NothingToEdit as exc:
            raise HTTPException(409, str(exc)) from exc

        def answer() -> ap.Step:
            with db.session() as s:
                task = s.get_one(Task, tid)
                if index is None:
                    raise HTTPException(409, "the task ended before its first step")
                step = s.execute(select(Step).where(Step.task_id == tid, Step.step_index == index)).scalar_one()
            view = _steps(db, task, [step])[0]
            if view.status != "completed":  # this request set it going: past the bound it is still running
                view.status = "running"
            return view

        return await run_in_threadpool(answer)

    @router.get("/tasks/{task_id}/steps/{step_id}", response_model=ap.Step, tags=TAGS, responses=NOT_FOUND)
    def get_agent_task_step(task_id: str, step_id: str, request: Request) -> ap.Step:
        """Get details about a specified task step."""
        db = db_of(request)
        with db.session() as s:
            task = _task(s, task_id, tenant_of(request))
            steps = list(s.scalars(select(Step).where(Step.task_id == task.id).order_by(Step.step_index)))
        wanted = [st for st in steps if make_step_id(task.id, st.step_index) == step_id.lower()]
        if not wanted:
            raise HTTPException(404, f"step {step_id!r} not found")
        return _steps(db, task, wanted)[0]

    @router.get(
        "/tasks/{task_id}/artifacts", response_model=ap.TaskArtifactsListResponse, tags=TAGS, responses=NOT_FOUND
    )
    def list_agent_task_artifacts(
        task_id: str,
        request: Request,
        current_page: int = Query(1, ge=1, description="Page number"),
        page_size: int = Query(10, ge=1, le=max_page, description="Number of items per page"),
    ) -> ap.TaskArtifactsListResponse:
        """List the artifacts of the task (written by the agent or uploaded)."""
        with db_of(request).session() as s:
            task = _task(s, task_id, tenant_of(request))
            total = s.execute(
                select(func.count()).select_from(Artifact).where(Artifact.task_id == task.id)
            ).scalar_one()
            stmt = select(Artifact).where(Artifact.task_id == task.id).order_by(Artifact.created_at, Artifact.id)
            rows = _page(s, stmt, total, current_page, page_size)
        return ap.TaskArtifactsListResponse(
            artifacts=[_artifact(a) for a in rows], pagination=_pagination(total, current_page, page_size)
        )

    @router.post(
        "/tasks/{task_id}/artifacts",
        response_model=ap.Artifact,
        tags=TAGS,
        responses={**NOT_FOUND, **UNPROCESSABLE, 413: {"description": "The file is over the upload limit."}},
    )
    def upload_agent_task_artifacts(
        task_id: str,
        request: Request,
        file: Annotated[UploadFile, File(description="File to upload.")],
        relative_path: Annotated[str | None, Form(description="Directory (or path) in the workspace.")] = None,
        relative_path_query: Annotated[
            str | None, Query(alias="relative_path", description="Same as the form field (AutoGPT's forge).")
        ] = None,
    ) -> ap.Artifact:
        """Upload an artifact into the task's workspace (``relative_path`` as a form field or a query parameter)."""
        db = db_of(request)
        try:
            directory = uploads.clean_relative_path(relative_path if relative_path is not None else relative_path_query)
            path = uploads.artifact_path(directory, uploads.clean_file_name(file.filename))
        except uploads.BadPath as exc:
            raise HTTPException(422, str(exc)) from exc
        with db.session() as s:
            task = _task(s, task_id, tenant_of(request))
        try:
            size, digest = uploads.save(store, task.id, path, file.file, settings.api_max_upload_bytes)
        except uploads.TooLarge as exc:
            raise HTTPException(413, str(exc)) from exc
        except uploads.BadPath as exc:
            raise HTTPException(422, str(exc)) from exc
        except ArtifactStoreError as exc:
            raise HTTPException(503, f"the artifact store is unavailable; retry shortly ({exc})",
                                headers={"Retry-After": "2"}) from exc
        with db.transaction() as s:
            artifact_id = s.execute(
                insert(Artifact)
                .values(task_id=task.id, step_index=None, relative_path=path, size_bytes=size, sha256=digest)
                .on_conflict_do_update(
                    constraint="uq_artifacts_task_path",
                    set_={"step_index": None, "size_bytes": size, "sha256": digest, "modified_at": func.now()},
                )
                .returning(Artifact.id)
            ).scalar_one()
            emit(s, task.id, "artifact.uploaded", relative_path=path, size_bytes=size)
        with db.session() as s:
            return _artifact(s.get_one(Artifact, artifact_id))

    @router.get(
        "/tasks/{task_id}/artifacts/{artifact_id}",
        tags=TAGS,
        response_class=StreamingResponse,
        responses={
            200: {
                "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
                "description": "The artifact's content.",
            },
            **NOT_FOUND,
        },
    )
    def download_agent_task_artifact(task_id: str, artifact_id: str, request: Request) -> StreamingResponse:
        """Download a specified artifact."""
        with db_of(request).session() as s:
            task = _task(s, task_id, tenant_of(request))
            artifact = s.get(Artifact, _uuid(artifact_id, "artifact"))
            if artifact is None or artifact.task_id != task.id:
                raise HTTPException(404, f"artifact {artifact_id!r} not found")
        try:
            body = store.open(str(task.id), artifact.relative_path)  # the workers' store: local or S3
        except ArtifactNotFound as exc:
            raise HTTPException(404, f"the content of artifact {artifact_id!r} is no longer available") from exc
        except ArtifactStoreError as exc:
            raise HTTPException(503, f"the artifact store is unavailable; retry shortly ({exc})",
                                headers={"Retry-After": "2"}) from exc
        name = artifact.relative_path.rsplit("/", 1)[-1]
        ascii_name = name.encode("ascii", "replace").decode().replace('"', "_").replace("?", "_")
        headers = {"Content-Disposition": f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(name)}"}
        size = uploads.size_of(body)
        if size is not None:
            headers["Content-Length"] = str(size)
        # closed after the response too: a client gone before the first chunk never runs the generator's finally
        return StreamingResponse(
            uploads.chunks(body), media_type="application/octet-stream", headers=headers,
            background=BackgroundTask(body.close),
        )

    return router
