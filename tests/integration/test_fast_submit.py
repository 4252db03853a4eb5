"""``POST /v1/tasks`` through the gate's fast path (``api_shim.fast_submit``) answers exactly as FastAPI's route does:
each request below is sent to an API with the fast path and to one without, and the answers compared (status,
body, the headers a client reads). Ordinary submits take the fast path; every other request is handed to FastAPI
before anything is written. Real PostgreSQL and RabbitMQ."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from api_shim.fast_submit import FastSubmit
from autogpt_workers.store.models import Task

GOAL = "fast path"
UTF8_JSON = "application/json; charset=utf-8"


@pytest.fixture
def clients(migrated: None, settings: Any) -> Iterator[tuple[TestClient, TestClient]]:
    from api_shim.app import create_app

    limits = {"api_max_body_bytes": 4096, "api_max_input_bytes": 1024}
    with (
        TestClient(create_app(settings.model_copy(update=limits))) as fast,
        TestClient(create_app(settings.model_copy(update={**limits, "api_fast_submit": False}))) as slow,
    ):
        assert fast.app.state.fast_submit is not None  # type: ignore[attr-defined]
        assert getattr(slow.app.state, "fast_submit", None) is None  # type: ignore[attr-defined]
        yield fast, slow


@pytest.fixture
def taken(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """One entry per request the fast path saw: True if it answered it, False if it handed it to FastAPI."""
    seen: list[bool] = []
    parse = FastSubmit._parse

    def spy(self: FastSubmit, scope: Any, body: bytes) -> Any:
        got = parse(self, scope, body)
        seen.append(got[0] is not None)
        return got

    monkeypatch.setattr(FastSubmit, "_parse", spy)
    return seen


def _shape(resp: Any) -> tuple[int, Any, dict[str, str]]:
    """What a client reads of an answer; a new task's id, times and Location differ between two servers."""
    try:
        body = resp.json()
    except ValueError:
        body = resp.text
    if isinstance(body, dict) and "id" in body:
        body = {k: v for k, v in body.items() if k not in ("id", "created_at", "updated_at")}
    headers = {k: v for k, v in resp.headers.items() if k in ("content-type", "retry-after", "www-authenticate")}
    if "location" in resp.headers:
        headers["location"] = "/v1/tasks/<id>" if resp.headers["location"].startswith("/v1/tasks/") else "?"
    return resp.status_code, body, headers


REQUESTS: list[tuple[str, dict[str, Any]]] = [
    ("ordinary", {"json": {"goal": GOAL, "priority": 3, "budget": {"max_steps": 4}, "metadata": {"a": 1}}}),
    ("charset", {"content": json.dumps({"goal": GOAL}), "headers": {"content-type": UTF8_JSON}}),
    ("not json", {"content": b"{goal", "headers": {"content-type": "application/json"}}),
    ("not utf-8", {"content": b"\xff\xfe{}", "headers": {"content-type": "application/json"}}),
    ("a list", {"json": [1, 2]}),
    ("empty body", {"content": b"", "headers": {"content-type": "application/json"}}),
    ("no goal", {"json": {"priority": 3}}),
    ("bad priority", {"json": {"goal": GOAL, "priority": 99}}),
    ("unknown field", {"json": {"goal": GOAL, "colour": "red"}}),
    ("text/plain", {"content": json.dumps({"goal": GOAL}), "headers": {"content-type": "text/plain"}}),
    ("no content type", {"content": json.dumps({"goal": GOAL}), "headers": {"content-type": ""}}),
    ("metadata too large", {"json": {"goal": GOAL, "metadata": {"x": "y" * 3000}}}),
    ("body too large", {"json": {"goal": GOAL, "metadata": {"x": "y" * 5000}}}),
    ("unknown profile", {"json": {"goal": GOAL, "profile": "no-such-profile"}}),
    ("key too long", {"json": {"goal": GOAL}, "headers": {"idempotency-key": "k" * 256}}),
]
FAST = {"ordinary", "charset"}  # what the fast path answers itself


@pytest.mark.parametrize(("name", "request_kwargs"), REQUESTS, ids=[name for name, _ in REQUESTS])
def test_each_request_is_answered_as_the_route_answers_it(
    clients: tuple[TestClient, TestClient], taken: list[bool], name: str, request_kwargs: dict[str, Any]
) -> None:
    fast, slow = clients
    got = fast.post("/v1/tasks", **request_kwargs)
    assert taken == [name in FAST] or (name == "body too large" and taken == [])
    want = slow.post("/v1/tasks", **request_kwargs)
    assert _shape(got) == _shape(want), name


def test_an_idempotent_replay_and_a_conflict_are_answered_as_the_route_answers_them(
    clients: tuple[TestClient, TestClient], taken: list[bool], db: Any
) -> None:
    fast, slow = clients
    key = f"fast-{uuid.uuid4()}"
    first = fast.post("/v1/tasks", json={"goal": GOAL}, headers={"Idempotency-Key": key})
    again = fast.post("/v1/tasks", json={"goal": GOAL}, headers={"Idempotency-Key": key})
    other = fast.post("/v1/tasks", json={"goal": "another"}, headers={"Idempotency-Key": key})
    assert taken == [True, True, True]
    assert (first.status_code, again.status_code, other.status_code) == (201, 200, 409)
    assert again.json()["id"] == first.json()["id"] and again.headers["location"] == first.headers["location"]
    slow_key = f"slow-{uuid.uuid4()}"
    slow_first = slow.post("/v1/tasks", json={"goal": GOAL}, headers={"Idempotency-Key": slow_key})
    slow_again = slow.post("/v1/tasks", json={"goal": GOAL}, headers={"Idempotency-Key": slow_key})
    slow_other = slow.post("/v1/tasks", json={"goal": "another"}, headers={"Idempotency-Key": slow_key})
    # a replay is answered with the task as it is now, which another test's workers may have started running: the
    # new tasks' answers (as committed) are compared whole, the replays by status and task
    assert _shape(first) == _shape(slow_first)
    assert (again.status_code, slow_again.status_code) == (200, 200)
    assert slow_again.json()["id"] == slow_first.json()["id"]
    assert _shape(other)[:1] == _shape(slow_other)[:1] and "idempotency key" in other.json()["detail"]
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(Task).where(Task.idempotency_key == key)) == 1


def test_a_fast_submit_is_counted_under_the_routes_template(clients: tuple[TestClient, TestClient]) -> None:
    fast, _ = clients

    def count() -> float:
        for line in fast.get("/metrics").text.splitlines():
            if line.startswith('autogpt_api_requests_total{') and 'endpoint="/v1/tasks"' in line and (
                'method="POST"' in line and 'status="201"' in line
            ):
                return float(line.split()[-1])
        return 0.0

    before = count()
    assert fast.post("/v1/tasks", json={"goal": GOAL}).status_code == 201
    assert count() == before + 1
    assert fast.post("/v1/tasks", json={"goal": GOAL}).headers.get("x-ratelimit-remaining") is not None


def test_a_chunked_body_past_the_limit_is_a_413(clients: tuple[TestClient, TestClient], taken: list[bool]) -> None:
    """No Content-Length for the gate to refuse early: the body is cut off while the fast path reads it, and the
    answer is the gate's documented 413 (``BodyTooLarge``'s handler). FastAPI's route answers the same body 400
    ("There was an error parsing the body": its body reader wraps the error), the one place the two differ."""
    fast, slow = clients

    def chunks() -> Iterator[bytes]:
        yield b'{"goal": "' + b"x" * 3000
        yield b"y" * 3000 + b'"}'

    headers = {"content-type": "application/json"}
    got = fast.post("/v1/tasks", content=chunks(), headers=headers)
    assert got.status_code == 413 and "request body larger than 4096 bytes" in got.json()["detail"]
    assert taken == []  # refused while reading, before any parsing
    assert slow.post("/v1/tasks", content=chunks(), headers=headers).status_code == 400
