"""The native API for services: listing with filters and cursors, idempotent submission under concurrency, the
extra fields, and limits answered with clear 4xx."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

import httpx
from sqlalchemy import func, select

from autogpt_workers.store.models import Task
from tests.api.conftest import Gateway, wait_terminal


def test_twenty_concurrent_duplicates_make_one_task(gateway: Gateway, db: Any) -> None:
    t = gateway.tenant("idem")
    key = f"order-{uuid.uuid4()}"
    body = {"goal": "Charge the card once [[steps:1]]", "priority": 6, "metadata": {"order": 42}}

    def post(_: int) -> httpx.Response:
        return httpx.post(
            f"{gateway.url}/v1/tasks", json=body, headers={**t.headers, "Idempotency-Key": key}, timeout=30
        )

    with ThreadPoolExecutor(20) as pool:
        responses = list(pool.map(post, range(20)))
    assert sorted(r.status_code for r in responses) == [200] * 19 + [201], [r.text for r in responses]
    assert len({r.json()["id"] for r in responses}) == 1
    with db.session() as s:
        count = s.execute(select(func.count()).select_from(Task).where(Task.idempotency_key == key)).scalar_one()
    assert count == 1
    other = httpx.post(
        f"{gateway.url}/v1/tasks", json={**body, "priority": 1}, headers={**t.headers, "Idempotency-Key": key}
    )
    assert other.status_code == 409
    # the key is the tenant's own: another tenant may use the same key for its own task
    u = gateway.tenant("idem2")
    theirs = httpx.post(f"{gateway.url}/v1/tasks", json=body, headers={**u.headers, "Idempotency-Key": key})
    assert theirs.status_code == 201 and theirs.json()["id"] != responses[0].json()["id"]


def test_the_submit_answer_is_the_task_as_read_back(gateway: Gateway, db: Any) -> None:
    """The 201 is built from what the submit wrote (no read-back): it must say exactly what a GET reads, with and
    without a webhook (whose options take the other path), and the options, event and wake-up rows exist."""
    from autogpt_workers.store.gateway import TaskOptions
    from autogpt_workers.store.models import Outbox, Step, TaskEvent

    t = gateway.tenant("answer")
    bodies: list[dict[str, Any]] = [
        {"goal": "Wait for approval [[steps:1]]", "approval": "always", "priority": 2},
        {
            "goal": "Everything set [[steps:1]]",
            "approval": "always",
            "priority": 3,
            "budget": {"max_steps": 4},
            "allowed_commands": ["finish"],
            "profile": "execution",
            "metadata": {"b": [1, 2.5, None], "a": {"nested": True}},
            "deadline": "2099-01-01T00:00:00Z",
        },
        {"goal": "Webhook [[steps:1]]", "approval": "always", "webhook_url": "http://127.0.0.1:9/h"},
    ]
    with gateway.client(t) as c:
        for body in bodies:
            created = c.post("/v1/tasks", json=body)
            assert created.status_code == 201, created.text
            answer = created.json()
            assert created.headers["location"] == f"/v1/tasks/{answer['id']}"
            assert answer["status"] == "queued" and answer["waiting_for_slot"] is False
            read = c.get(f"/v1/tasks/{answer['id']}").json()
            if read["status"] != "queued":  # a worker took it meanwhile: only what it changes may differ
                read.update({k: answer[k] for k in ("status", "started_at", "usage", "steps_completed")})
            assert answer == read
            task_id = uuid.UUID(answer["id"])
            with db.session() as s:
                options = s.get(TaskOptions, task_id)
                assert options is not None and options.source == "native"
                assert options.base_priority == body.get("priority", 5) and options.webhook_url == body.get(
                    "webhook_url"
                )
                assert s.scalars(select(Step.step_index).where(Step.task_id == task_id)).all() == [0]
                kinds = s.scalars(
                    select(TaskEvent.kind).where(TaskEvent.task_id == task_id).order_by(TaskEvent.id)
                ).all()
                assert kinds[0] == "task.queued"
                phases = s.execute(select(Outbox.step_index, Outbox.phase).where(Outbox.task_id == task_id)).all()
                assert (0, "think") in phases


def test_native_fields_are_stored_and_shown(gateway: Gateway) -> None:
    t = gateway.tenant("fields")
    with gateway.client(t) as c:
        body = {
            "goal": "Write things [[steps:2]]",
            "priority": 7,
            "budget": {"max_steps": 5, "max_tokens": 100000, "max_cost_usd": 1.5, "max_wall_seconds": 600},
            "profile": "execution",
            "allowed_commands": ["write_file", "finish"],
            "webhook_url": "http://127.0.0.1:9/hook",
            "webhook_events": ["task.*"],
            "metadata": {"customer": "acme", "ticket": 7},
            "deadline": "2999-01-02T03:04:05+00:00",
            "approval": ["external"],
        }
        created = c.post("/v1/tasks", json=body)
        assert created.status_code == 201, created.text
        task = created.json()
        fields = ("priority", "profile", "allowed_commands", "webhook_url", "webhook_events", "metadata", "approval")
        for field in fields:
            assert task[field] == body[field], field
        assert datetime.fromisoformat(task["deadline"]) == datetime.fromisoformat(body["deadline"])
        assert task["budget"]["max_cost_usd"] == 1.5 and task["effective_priority"] == 7
        done = wait_terminal(c, task["id"])
        assert done["status"] == "completed" and done["profile"] == "execution"
        for shown in (done, *c.get("/v1/tasks").json()["tasks"][:1]):  # read back: one task, and in the list
            assert shown["approval"] == ["external"], shown
            assert datetime.fromisoformat(shown["deadline"]) == datetime.fromisoformat(body["deadline"])
        plain = c.post("/v1/tasks", json={"goal": "Plain [[steps:1]]"}).json()
        assert plain["deadline"] is None and plain["approval"] == "never"


def test_list_filters_by_status_and_pages_with_a_cursor(gateway: Gateway) -> None:
    t = gateway.tenant("list")
    with gateway.client(t) as c:
        ids = [c.post("/v1/tasks", json={"goal": f"Write things [[steps:1]] #{i}"}).json()["id"] for i in range(5)]
        for task_id in ids:
            wait_terminal(c, task_id)
        seen: list[str] = []
        cursor = None
        pages = 0
        while True:
            params: dict[str, Any] = {"limit": 2, "status": "completed"}
            if cursor:
                params["cursor"] = cursor
            page = c.get("/v1/tasks", params=params).json()
            seen += [task["id"] for task in page["tasks"]]
            pages += 1
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert seen == list(reversed(ids)) and pages == 3  # newest first, no repeats, nothing missed
        assert c.get("/v1/tasks", params={"status": ["failed", "cancelled"]}).json()["tasks"] == []
        assert c.get("/v1/tasks", params={"status": "bogus"}).status_code == 422
        assert c.get("/v1/tasks", params={"cursor": "not-a-cursor"}).status_code == 422
        assert c.get("/v1/tasks", params={"limit": 0}).status_code == 422
        assert c.get("/v1/tasks", params={"limit": 101}).status_code == 422


def test_limits_are_clear_4xx(gateway: Gateway) -> None:
    t = gateway.tenant("limits")
    with gateway.client(t) as c:
        too_long = c.post("/v1/tasks", json={"goal": "x" * 20_001})
        assert too_long.status_code == 422
        big_meta = c.post("/v1/tasks", json={"goal": "x", "metadata": {"blob": "y" * 20_000}})
        assert big_meta.status_code == 422 and "metadata" in str(big_meta.json()["detail"])
        huge = c.post(
            "/v1/tasks", content=b'{"goal": "' + b"z" * 1_100_000 + b'"}', headers={"Content-Type": "application/json"}
        )
        assert huge.status_code == 413
        bad_hook = c.post("/v1/tasks", json={"goal": "x", "webhook_url": "ftp://example/x"})
        assert bad_hook.status_code == 422
        bad_events = c.post("/v1/tasks", json={"goal": "x", "webhook_events": ["not an event"]})
        assert bad_events.status_code == 422
        big_input = c.post("/ap/v1/agent/tasks", json={"input": "x", "additional_input": {"a": "b" * 20_000}})
        assert big_input.status_code == 422 and "additional_input" in big_input.json()["message"]
        no_input = c.post("/ap/v1/agent/tasks", json={"additional_input": {}})
        assert no_input.status_code == 422 and "input" in no_input.json()["message"]
        assert c.get("/ap/v1/agent/tasks", params={"page_size": 0}).status_code == 422
        assert c.get("/ap/v1/agent/tasks", params={"current_page": 0}).status_code == 422
        assert c.get("/ap/v1/agent/tasks", params={"page_size": 1000}).status_code == 422


def test_text_postgresql_cannot_store_is_a_clear_422_and_nothing_is_written(gateway: Gateway, db: Any) -> None:
    """A NUL or an unpaired surrogate anywhere in a submission (as a JSON escape, or a surrogate's raw UTF-8 bytes,
    which ``json.loads`` lets through) is a 422 naming the field, on the gate's fast path and on the framework's
    route (a body with a profile takes it), and on the Agent Protocol's; text without them, Hangul's 0xED lead bytes
    included, is accepted. Once a key's surrogate was a 503 (the check read the JSON-mode dump, which replaces it)
    and a raw surrogate a 500 (the 422's own JSON could not be encoded)."""
    t = gateway.tenant("unstorable")
    json_headers = {"Content-Type": "application/json"}
    bodies: list[tuple[bytes, str]] = [
        (b'{"goal": "nul \\u0000 here"}', "goal"),
        (b'{"goal": "x", "metadata": {"k": "lone \\ud800"}}', "metadata"),
        (b'{"goal": "x", "metadata": {"lone \\uDC00 key": 1}}', "metadata"),
        (b'{"goal": "raw \xed\xa0\x80 surrogate"}', "goal"),
        (b'{"goal": "x", "webhook_events": [], "metadata": {"a": ["deep", {"b": "\\u0000"}]}}', "metadata"),
    ]
    with gateway.client(t) as c:
        for body, field in bodies:
            for extra in (b"", b', "profile": "execution"'):
                sent = body[:-1] + extra + b"}"
                answer = c.post("/v1/tasks", content=sent, headers=json_headers)
                assert answer.status_code == 422, (sent, answer.text)
                assert field in str(answer.json()["detail"]), answer.text
        agent_protocol = [
            b'{"input": "nul \\u0000 here"}',
            b'{"input": "raw \xed\xa0\x80 surrogate"}',
            b'{"input": "x", "additional_input": {"k": "lone \\ud800"}}',
        ]
        for body in agent_protocol:
            answer = c.post("/ap/v1/agent/tasks", content=body, headers=json_headers)
            assert answer.status_code == 422, (body, answer.text)
            assert "input" in answer.json()["message"], answer.text
        hangul = "\ud55c\uae00 \ub41c \ubaa9\ud45c"  # 한글 된 목표: lead bytes 0xED and others
        ok = c.post("/v1/tasks", content=f'{{"goal": "{hangul} [[steps:1]]"}}'.encode(), headers=json_headers)
        assert ok.status_code == 201, ok.text
        assert ok.json()["goal"] == "\ud55c\uae00 \ub41c \ubaa9\ud45c [[steps:1]]"
    with db.session() as s:
        stored = s.execute(select(func.count()).select_from(Task).where(Task.tenant_id == t.id)).scalar_one()
    assert stored == 1


def test_numbers_and_nesting_json_cannot_carry_are_a_clear_422(gateway: Gateway, db: Any) -> None:
    """NaN, Infinity, a float past a double's range and nesting past ``storable.MAX_DEPTH``, in every JSON a client
    sends (a submission's metadata and budget, the Agent Protocol's inputs and a step's, an approval's arguments):
    a 422 naming the field, nothing written. They were 503s (PostgreSQL refused them, "the store is unavailable":
    a client would retry for ever) and 500s (the 422 echoing a NaN, pydantic's serializer past its depth)."""
    from api_shim.storable import MAX_DEPTH

    t = gateway.tenant("numbers")
    json_headers = {"Content-Type": "application/json"}
    deep = b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1)
    values = [b"NaN", b"-Infinity", b"1e400", deep]
    with gateway.client(t) as c:
        for value in values:
            for extra in (b"", b', "profile": "execution"'):  # the fast path, the framework's route
                body = b'{"goal": "x", "metadata": {"v": ' + value + b"}" + extra + b"}"
                answer = c.post("/v1/tasks", content=body, headers=json_headers)
                assert answer.status_code == 422 and "metadata" in answer.text, (body, answer.text)
            if value != deep:
                body = b'{"goal": "x", "budget": {"max_cost_usd": ' + value + b"}}"
                answer = c.post("/v1/tasks", content=body, headers=json_headers)
                assert answer.status_code == 422 and "max_cost_usd" in answer.text, (body, answer.text)
            body = b'{"input": "x", "additional_input": {"v": ' + value + b"}}"
            answer = c.post("/ap/v1/agent/tasks", content=body, headers=json_headers)
            assert answer.status_code == 422 and "additional_input" in answer.json()["message"], answer.text
        held = c.post("/v1/tasks", json={"goal": "Held [[steps:2]]", "approval": "always"}).json()["id"]
        step_task = c.post("/ap/v1/agent/tasks", json={"input": "Stepped [[steps:2]]"}).json()["task_id"]
        for value in values:
            body = b'{"command": "finish", "arguments": {"reason": ' + value + b"}}"
            answer = c.post(f"/v1/tasks/{held}/approve", content=body, headers=json_headers)
            assert answer.status_code == 422 and "arguments" in answer.text, (body, answer.text)
            body = b'{"input": "go", "additional_input": {"v": ' + value + b"}}"
            answer = c.post(f"/ap/v1/agent/tasks/{step_task}/steps", content=body, headers=json_headers)
            assert answer.status_code == 422 and "additional_input" in answer.json()["message"], answer.text
        fine = c.post("/v1/tasks", json={"goal": "Fine [[steps:1]]", "metadata": {"big": 10**30, "f": 1e308}})
        assert fine.status_code == 201, fine.text
        assert fine.json()["metadata"] == {"big": 10**30, "f": 1e308}
    with db.session() as s:
        stored = s.execute(select(func.count()).select_from(Task).where(Task.tenant_id == t.id)).scalar_one()
    assert stored == 3  # held, step_task and fine


def test_a_profile_fills_the_tasks_defaults_and_an_unknown_one_is_422(gateway: Gateway, db: Any) -> None:
    t = gateway.tenant("profile")
    with gateway.client(t) as c:
        created = c.post("/v1/tasks", json={"goal": "Plan it [[steps:1]]", "profile": "capability"})
        assert created.status_code == 201, created.text
        task = c.get(f"/v1/tasks/{created.json()['id']}").json()  # as read back
        for field in ("allowed_commands", "budget"):
            assert created.json()[field] == task[field], field  # the answer says what was stored
        assert task["profile"] == "capability"
        assert task["allowed_commands"] == ["list_files", "read_file", "web_fetch", "write_file", "finish"]
        assert task["budget"] == {"max_steps": 20, "max_tokens": None, "max_cost_usd": None, "max_wall_seconds": 1200}
        # what the caller names wins, limit by limit; the profile fills the rest
        own = c.post("/v1/tasks", json={"goal": "Review [[steps:1]]", "profile": "governance",
                                        "budget": {"max_steps": 3}, "approval": "always"}).json()
        assert own["budget"]["max_steps"] == 3 and own["budget"]["max_wall_seconds"] == 900
        assert own["allowed_commands"] == ["list_files", "read_file", "finish"]
        # through the Agent Protocol: additional_input picks the profile (continuous: the profile's approval)
        ap_task = c.post("/ap/v1/agent/tasks", json={
            "input": "Plan it [[steps:1]]", "additional_input": {"mode": "continuous", "profile": "capability"}})
        assert ap_task.status_code == 200, ap_task.text
        step_by_step = c.post("/ap/v1/agent/tasks", json={
            "input": "Evolve [[steps:1]]", "additional_input": {"profile": "evolution"}}).json()
        with db.session() as s:
            rows = {str(r.id): r for r in s.scalars(select(Task).where(Task.tenant_id == t.id))}
        assert rows[task["id"]].approval == ["external"]
        assert rows[own["id"]].approval == "always"
        assert rows[ap_task.json()["task_id"]].approval == ["external"]
        assert rows[ap_task.json()["task_id"]].budget["max_wall_seconds"] == 1200
        assert rows[step_by_step["task_id"]].approval == "always"  # every step waits for its POST .../steps
        assert rows[step_by_step["task_id"]].allowed_commands == ["list_files", "read_file", "write_file",
                                                                  "ask_user", "finish"]
        # an unknown profile: 422 naming the known ones, and no task
        before = len(rows)
        unknown = c.post("/v1/tasks", json={"goal": "x", "profile": "ceo"})
        assert unknown.status_code == 422
        assert unknown.json()["detail"][0]["loc"] == ["body", "profile"]
        assert "unknown profile 'ceo'; known profiles: capability, evolution" in unknown.json()["detail"][0]["msg"]
        ap_unknown = c.post("/ap/v1/agent/tasks", json={"input": "x", "additional_input": {"profile": "ceo"}})
        assert ap_unknown.status_code == 422 and "unknown profile 'ceo'" in ap_unknown.json()["message"]
        ap_bad = c.post("/ap/v1/agent/tasks", json={"input": "x", "additional_input": {"profile": ["x"]}})
        assert ap_bad.status_code == 422 and "additional_input.profile" in ap_bad.json()["message"]
        with db.session() as s:
            assert s.execute(select(func.count()).select_from(Task).where(Task.tenant_id == t.id)).scalar_one() \
                == before
