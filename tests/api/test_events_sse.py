"""``GET /v1/tasks/{id}/events``: a Server-Sent Events stream of the task's life that a client resumes with
Last-Event-ID and misses nothing."""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
from sqlalchemy import select

from autogpt_workers.store.models import TaskEvent
from tests.api.conftest import Gateway, wait_terminal


def read_events(response: httpx.Response, limit: int | None = None) -> list[dict[str, Any]]:
    """Parse SSE frames (id/event/data) until the stream ends or ``limit`` events were read."""
    events: list[dict[str, Any]] = []
    frame: dict[str, str] = {}
    for line in response.iter_lines():
        if line == "":
            if "data" in frame:
                events.append({"id": int(frame["id"]), "event": frame["event"], "data": json.loads(frame["data"])})
                if limit is not None and len(events) >= limit:
                    return events
            frame = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(": ")
            frame[name] = value
    return events


def test_stream_resumes_from_last_event_id(gateway: Gateway, llm: Any, db: Any) -> None:
    t = gateway.tenant("sse")
    llm.register_script(
        "sse",
        [
            {"tool": "write_file", "arguments": {"path": f"f{i}.txt", "content": str(i)}, "latency_s": 0.3}
            for i in range(4)
        ],
    )
    with gateway.client(t) as c:
        task_id = c.post("/v1/tasks", json={"goal": "Stream me [[script:sse]]"}).json()["id"]
        with c.stream("GET", f"/v1/tasks/{task_id}/events") as first:
            assert first.status_code == 200
            assert first.headers["content-type"].startswith("text/event-stream")
            head = read_events(first, limit=3)  # then the client goes away mid-run
        resume_from = head[-1]["id"]
        with c.stream("GET", f"/v1/tasks/{task_id}/events", headers={"Last-Event-ID": str(resume_from)}) as again:
            rest = read_events(again)  # ends by itself after the final event
        task = wait_terminal(c, task_id)
    assert task["status"] == "completed"
    with db.session() as s:
        logged = list(
            s.execute(
                select(TaskEvent.id, TaskEvent.kind)
                .where(TaskEvent.task_id == uuid.UUID(task_id))
                .order_by(TaskEvent.id)
            ).tuples()
        )
    streamed = [(e["id"], e["event"]) for e in head + rest]
    assert streamed == logged  # every event once, in order, nothing missed across the reconnect
    assert rest[0]["id"] > resume_from and rest[-1]["event"] == "task.completed"
    assert head[0]["event"] == "task.queued" and head[0]["data"]["task_id"] == task_id
    # a finished task's stream replays and ends; the query parameter works like the header
    with gateway.client(t) as c:
        with c.stream("GET", f"/v1/tasks/{task_id}/events", params={"last_event_id": rest[-2]["id"]}) as tail:
            assert [e["event"] for e in read_events(tail)] == ["task.completed"]
        with c.stream("GET", f"/v1/tasks/{task_id}/events", headers={"Last-Event-ID": "abc"}) as bad:
            assert bad.status_code == 422
