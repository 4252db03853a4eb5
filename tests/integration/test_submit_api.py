"""The submit API in-process (FastAPI TestClient) on real PostgreSQL and RabbitMQ."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from autogpt_workers.store.models import Outbox, Step, Task


@pytest.fixture
def client(migrated, settings) -> Iterator[TestClient]:  # type: ignore[no-untyped-def]
    from api_shim.app import create_app

    with TestClient(create_app(settings)) as c:
        yield c


def _wait_marked_published(db, task_id: uuid.UUID) -> None:  # type: ignore[no-untyped-def]
    """Until the task's first wake-up (the think of step 0) is marked published in the outbox (10 s at most)."""
    first = (Outbox.task_id == task_id, Outbox.step_index == 0, Outbox.phase == "think")
    deadline = time.monotonic() + 10
    while True:
        with db.session() as s:
            if s.scalars(select(Outbox.published_at).where(*first)).one() is not None:
                return
        assert time.monotonic() < deadline, "the published wake-up was never marked"
        time.sleep(0.05)


def test_submit_commits_the_task_and_its_first_wakeup(client: TestClient, db) -> None:  # type: ignore[no-untyped-def]
    resp = client.post("/v1/tasks", json={"goal": "say hi", "priority": 7, "budget": {"max_steps": 3}})
    assert resp.status_code == 201, resp.text
    body = resp.json()
    assert body["status"] in ("queued", "running") and body["priority"] == 7 and body["budget"]["max_steps"] == 3
    assert resp.headers["location"] == f"/v1/tasks/{body['id']}"
    tid = uuid.UUID(body["id"])
    with db.session() as s:
        assert s.get_one(Task, tid).goal == "say hi"
        # workers of other tests may already be running it (step 1 written too: read the steps in order); its first
        # wake-up is the think of step 0
        assert s.scalars(select(Step.step_index).where(Step.task_id == tid).order_by(Step.step_index)).all()[0] == 0
        first = (Outbox.task_id == tid, Outbox.step_index == 0, Outbox.phase == "think")
        assert s.scalars(select(Outbox).where(*first)).one() is not None
    # confirmed by the broker, then marked in the API process's next batch of marks (every 0.2 s)
    _wait_marked_published(db, tid)
    got = client.get(f"/v1/tasks/{tid}")
    assert got.status_code == 200 and got.json()["id"] == str(tid)
    steps = client.get(f"/v1/tasks/{tid}/steps").json()
    assert steps[0]["step_index"] == 0  # workers may already be running it


def test_idempotency_key_same_body_same_task_other_body_conflict(client: TestClient) -> None:
    key = f"key-{uuid.uuid4()}"
    body = {"goal": "once only"}
    first = client.post("/v1/tasks", json=body, headers={"Idempotency-Key": key})
    again = client.post("/v1/tasks", json=body, headers={"Idempotency-Key": key})
    other = client.post("/v1/tasks", json={"goal": "something else"}, headers={"Idempotency-Key": key})
    assert first.status_code == 201 and again.status_code == 200
    assert first.json()["id"] == again.json()["id"]
    assert other.status_code == 409 and "idempotency key" in other.json()["detail"]


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"goal": ""},
        {"goal": "   "},
        {"goal": "x", "priority": 10},
        {"goal": "x", "priority": -1},
        {"goal": "x", "budget": {"max_steps": 0}},
        {"goal": "x", "budget": {"max_cost_usd": -1}},
        {"goal": "x", "unknown_field": 1},
        {"goal": "x" * 20_001},
        {"goal": "nul\x00byte"},
        [1, 2],
    ],
)
def test_bad_input_is_a_clear_422(client: TestClient, body: object) -> None:
    resp = client.post("/v1/tasks", json=body)
    assert resp.status_code == 422
    assert resp.json()["detail"]


def test_not_json_is_a_4xx(client: TestClient) -> None:
    resp = client.post("/v1/tasks", content=b"{not json", headers={"content-type": "application/json"})
    assert resp.status_code == 422


def test_unknown_and_malformed_ids(client: TestClient) -> None:
    missing = uuid.uuid4()
    for path in (f"/v1/tasks/{missing}", f"/v1/tasks/{missing}/steps", f"/v1/tasks/{missing}/artifacts"):
        resp = client.get(path)
        assert resp.status_code == 404 and str(missing) in resp.json()["detail"]
    assert client.get("/v1/tasks/not-a-uuid").status_code == 422


def test_the_openapi_document_describes_the_native_api(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/tasks", "/v1/tasks/{task_id}", "/v1/tasks/{task_id}/steps"} <= set(paths)


def _batch_count(client: TestClient) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("autogpt_api_submit_batch_size_count "):
            return float(line.split()[1])
    return 0.0


def test_a_submit_is_written_by_the_group_commit_and_counted_on_metrics(migrated, settings) -> None:  # type: ignore[no-untyped-def]
    from api_shim.app import create_app

    # no backlog gate: the submit takes the one-statement path (the gate's transaction would bypass the group)
    with TestClient(create_app(settings.model_copy(update={"scheduler_max_ready": 0}))) as client:
        assert client.app.state.submit_group is not None  # type: ignore[attr-defined]
        before = _batch_count(client)
        for i in range(3):
            assert client.post("/v1/tasks", json={"goal": f"grouped {i}"}).status_code == 201
        assert _batch_count(client) == before + 3  # one statement each: they came one after the other
        assert client.app.state.submit_group.items >= 3  # type: ignore[attr-defined]


def test_the_group_commit_can_be_turned_off(migrated, settings) -> None:  # type: ignore[no-untyped-def]
    from api_shim.app import create_app

    with TestClient(create_app(settings.model_copy(update={"api_group_commit": False}))) as client:
        assert client.app.state.submit_group is None  # type: ignore[attr-defined]
        assert client.post("/v1/tasks", json={"goal": "alone"}).status_code == 201


def test_the_group_commits_batch_cap_is_a_setting(migrated, settings) -> None:  # type: ignore[no-untyped-def]
    from api_shim.app import create_app

    with TestClient(create_app(settings.model_copy(update={"api_group_commit_max_batch": 8}))) as client:
        assert client.app.state.submit_group.max_batch == 8  # type: ignore[attr-defined]
        assert client.post("/v1/tasks", json={"goal": "capped batches"}).status_code == 201


def test_the_background_publishers_threads_are_a_setting(migrated, settings, db) -> None:  # type: ignore[no-untyped-def]
    """``AUTOGPT_API_PUBLISH_THREADS`` threads publish the new tasks' first wake-ups (here 2, with batches of 8):
    every one of 12 submits' wake-ups is confirmed by the broker and marked published."""
    from api_shim.app import create_app

    update = {"api_publish_threads": 2, "api_publish_batch": 8}
    with TestClient(create_app(settings.model_copy(update=update))) as client:
        background = client.app.state.background_publisher  # type: ignore[attr-defined]
        assert (background.threads, background.batch) == (2, 8)
        with ThreadPoolExecutor(6) as pool:
            responses = list(pool.map(lambda i: client.post("/v1/tasks", json={"goal": f"two threads {i}"}),
                                      range(12)))
        assert [r.status_code for r in responses] == [201] * 12
        for response in responses:
            _wait_marked_published(db, uuid.UUID(response.json()["id"]))
        assert len(background._workers) <= 2


def _count_hops(monkeypatch) -> list[object]:  # type: ignore[no-untyped-def]
    """The functions the process runs in anyio's threads from now on (the route's hops, the caller's key read)."""
    from anyio import to_thread

    from api_shim import routes

    hops: list[object] = []
    real = to_thread.run_sync

    async def counted(fn, *args, **kwargs):  # type: ignore[no-untyped-def]
        hops.append(fn)
        return await real(fn, *args, **kwargs)

    monkeypatch.setattr(routes.to_thread, "run_sync", counted)
    return hops


def test_a_grouped_submit_takes_no_thread_and_concurrent_ones_each_get_their_task(  # type: ignore[no-untyped-def]
    migrated, settings, db, monkeypatch
) -> None:
    """With the group commit and nothing to decide in a transaction, the route awaits the group's writer thread on
    the event loop (``submit_on_loop``): no thread hop of its own. Submits that arrive together are written
    together, each answered with its own task."""
    from api_shim.app import create_app

    hops = _count_hops(monkeypatch)
    with TestClient(create_app(settings.model_copy(update={"scheduler_max_ready": 0}))) as client:
        assert client.post("/v1/tasks", json={"goal": "warm-up"}).status_code == 201  # the caller's key is read once
        hops.clear()
        assert client.post("/v1/tasks", json={"goal": "on the loop"}).status_code == 201
        assert hops == []
        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(lambda i: client.post("/v1/tasks", json={"goal": f"together {i}"}), range(48)))
        assert hops == []
    assert {a.status_code for a in answers} == {201}
    ids = [uuid.UUID(a.json()["id"]) for a in answers]
    assert len(set(ids)) == 48
    with db.session() as s:
        goals = dict(s.execute(select(Task.id, Task.goal).where(Task.id.in_(ids))).tuples().all())
    assert [goals[i] for i in ids] == [f"together {i}" for i in range(48)]


def test_a_grouped_submit_publishes_its_wakeup_itself_when_the_background_publisher_is_full(  # type: ignore[no-untyped-def]
    migrated, settings, db, monkeypatch
) -> None:
    from api_shim.app import create_app

    with TestClient(create_app(settings.model_copy(update={"scheduler_max_ready": 0}))) as client:
        background = client.app.state.background_publisher  # type: ignore[attr-defined]
        assert client.post("/v1/tasks", json={"goal": "warm-up"}).status_code == 201  # the caller's key is read once
        background.offer = lambda wakeup, context: False  # full
        hops = _count_hops(monkeypatch)
        resp = client.post("/v1/tasks", json={"goal": "published by the route"})
    assert resp.status_code == 201, resp.text
    assert len(hops) == 1  # the publish (it waits for the broker's confirm), in a thread
    _wait_marked_published(db, uuid.UUID(resp.json()["id"]))  # confirmed before the answer; marked in the next batch
