"""``GET /v1/tasks/{task_id}/events``: the task's life as Server-Sent Events, replayable.

Each event of the task's log (``task_events``) is sent as ``id: <event id>``, ``event: <type>``, ``data: <JSON>``.
A client that reconnects with ``Last-Event-ID`` (browsers' ``EventSource`` do it by themselves), or passes
``?last_event_id=``, gets every event after that one first, then the live tail: it misses nothing. The stream ends
after the task's final event (completed, failed, cancelled), or after ``sse_max_stream_s`` (the client reconnects,
as EventSource does, and resumes); a comment line is sent every ``sse_heartbeat_s`` so proxies keep it open.

The tail polls PostgreSQL every ``sse_poll_s``. An event committed late with a smaller id than one already sent
(two writers racing) is still sent: each poll also looks a few seconds back and skips what it already sent.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Header, HTTPException, Query, Request
from fastapi.responses import StreamingResponse
from sqlalchemy import or_, select
from starlette.concurrency import run_in_threadpool

from api_shim.auth import tenant_of
from api_shim.routes import db_of, unprocessable
from autogpt_workers.config import Settings
from autogpt_workers.store import queries
from autogpt_workers.store.db import Database
from autogpt_workers.store.events import FINAL_KINDS, event_body
from autogpt_workers.store.models import TaskEvent

LOOK_BACK = timedelta(seconds=5)
# one frame of the stream; ``data`` is the JSON of ``store.events.event_body``
SSE_EVENT = {
    "type": "object",
    "properties": {
        "id": {"type": "string", "description": "The event id (resume with Last-Event-ID)."},
        "event": {"type": "string", "description": "The event type, e.g. task.completed."},
        "data": {"type": "string", "description": "JSON: id, type, task_id, step_index, created_at, data."},
        "retry": {"type": "string"},
    },
}
MEDIA_TYPE = "text/event-stream"


def _frame(event: TaskEvent) -> bytes:
    data = json.dumps(event_body(event), separators=(",", ":"))
    return f"id: {event.id}\nevent: {event.kind}\ndata: {data}\n\n".encode()


def _poll(db: Database, task_id: uuid.UUID, floor: int, after_id: int, sent: dict[int, float]) -> list[TaskEvent]:
    """Events after ``after_id``, and recent ones after ``floor`` (where the client resumed) not yet sent."""
    since = datetime.now(UTC) - LOOK_BACK
    with db.session() as s:
        rows = s.scalars(
            select(TaskEvent)
            .where(
                TaskEvent.task_id == task_id,
                TaskEvent.id > floor,
                or_(TaskEvent.id > after_id, TaskEvent.created_at > since),
            )
            .order_by(TaskEvent.id)
            .limit(1000)
        )
        return [e for e in rows if e.id not in sent]


async def stream(
    request: Request, db: Database, task_id: uuid.UUID, after_id: int, settings: Settings
) -> AsyncIterator[bytes]:
    yield f"retry: {int(settings.sse_poll_s * 4000)}\n\n".encode()
    floor = after_id
    sent: dict[int, float] = {}  # event id -> when it was sent (monotonic)
    last_beat = started = time.monotonic()
    while True:
        events = await run_in_threadpool(_poll, db, task_id, floor, after_id, sent)
        final = False
        now = time.monotonic()
        for event in events:
            sent[event.id] = now
            after_id = max(after_id, event.id)
            final = final or event.kind in FINAL_KINDS
            yield _frame(event)
        if final:
            return
        if time.monotonic() - last_beat >= settings.sse_heartbeat_s:
            last_beat = time.monotonic()
            yield b": keep-alive\n\n"
        if await request.is_disconnected() or time.monotonic() - started >= settings.sse_max_stream_s:
            return  # a long stream is recycled: the client reconnects with Last-Event-ID and misses nothing
        # what was sent longer ago than the look-back can no longer come back from _poll
        sent = {i: at for i, at in sent.items() if now - at < LOOK_BACK.total_seconds() * 2}
        await asyncio.sleep(settings.sse_poll_s)


def make_router(settings: Settings) -> APIRouter:
    router = APIRouter()

    @router.get(
        "/v1/tasks/{task_id}/events",
        tags=["tasks"],
        response_class=StreamingResponse,
        responses={
            200: {"content": {MEDIA_TYPE: {"schema": SSE_EVENT}}, "description": "An SSE stream, one event a frame."},
            404: {"description": "No such task (for this tenant)."},
        },
    )
    async def task_events(
        task_id: uuid.UUID,
        request: Request,
        last_event_id: Annotated[str | None, Header(max_length=32)] = None,
        after: Annotated[int | None, Query(alias="last_event_id", ge=0, description="Replay after this id.")] = None,
    ) -> StreamingResponse:
        """Server-Sent Events of the task's life; resume with ``Last-Event-ID``."""
        db = db_of(request)
        tenant = tenant_of(request)

        def exists() -> bool:
            with db.session() as s:
                return queries.get_task(s, task_id, tenant) is not None

        if not await run_in_threadpool(exists):
            raise HTTPException(404, f"task {task_id} not found")
        start: Any = after
        if last_event_id is not None:
            if not last_event_id.strip().isdigit():
                raise unprocessable(("header", "last-event-id"), "Last-Event-ID must be an event id (a whole number)")
            start = int(last_event_id)
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return StreamingResponse(
            stream(request, db, task_id, int(start or 0), settings), media_type=MEDIA_TYPE, headers=headers
        )

    return router
