"""A submit is one statement in autocommit (``Ledger.create_task_alone``) unless a cap or a taken idempotency key
needs the transaction; on real PostgreSQL and RabbitMQ. What is written must be the same either way."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import event, select, text

from autogpt_workers.admission import Policy
from autogpt_workers.broker import Publisher
from autogpt_workers.contracts import TaskSubmission
from autogpt_workers.store.gateway import TaskOptions
from autogpt_workers.store.models import Outbox, Step, Task, TaskEvent
from autogpt_workers.submit import IdempotencyConflict, submit_task


@pytest.fixture
def inserts(db: Any) -> Iterator[list[bool]]:
    """The driver's autocommit flag at each ``INSERT INTO tasks`` the engine executes: True is the one-statement
    path, False a statement inside a transaction."""
    seen: list[bool] = []

    def before(conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if "INSERT INTO tasks" in statement:
            seen.append(bool(conn.connection.dbapi_connection.autocommit))

    event.listen(db.engine, "before_cursor_execute", before)
    try:
        yield seen
    finally:
        event.remove(db.engine, "before_cursor_execute", before)


@pytest.fixture
def publisher() -> Publisher:
    from autogpt_workers.celery_app import app

    return Publisher(app)


def _tenant(db: Any, max_running: int | None) -> str:
    tenant = f"alone-{uuid.uuid4().hex[:8]}"
    with db.transaction() as s:
        s.execute(
            text("INSERT INTO tenants (id, webhook_secret, max_running) VALUES (:id, 'x', :cap)"),
            {"id": tenant, "cap": max_running},
        )
    return tenant


def _written(db: Any, task_id: uuid.UUID) -> dict[str, Any]:
    with db.session() as s:
        return {
            "task": s.get_one(Task, task_id).status,
            "steps": s.scalars(
                select(Step.step_index).where(Step.task_id == task_id).order_by(Step.step_index)
            ).all(),
            "events": s.scalars(
                select(TaskEvent.kind).where(TaskEvent.task_id == task_id).order_by(TaskEvent.id)
            ).all(),
            "outbox": s.execute(
                select(Outbox.step_index, Outbox.phase).where(Outbox.task_id == task_id)
            ).all(),
            "options": s.execute(
                select(TaskOptions.source, TaskOptions.profile).where(TaskOptions.task_id == task_id)
            ).all(),
        }


def test_an_uncapped_submit_is_one_statement_in_autocommit(db: Any, publisher: Publisher, inserts: list[bool]) -> None:
    tenant = _tenant(db, None)
    got = submit_task(db, publisher, TaskSubmission(goal="alone"), tenant_id=tenant, policy=Policy(), source="ap")
    assert inserts == [True]
    assert got.created and got.view is not None and got.view.status.value == "queued"
    written = _written(db, got.task_id)  # workers of other tests may already be running it: what the submit wrote
    assert written["task"] in ("queued", "running", "completed", "failed")
    assert written["steps"][0] == 0 and written["events"][0] == "task.queued"
    assert (0, "think") in written["outbox"] and written["options"] == [("ap", None)]


def test_a_tenant_with_a_cap_takes_the_transaction_and_waits_at_its_cap(
    db: Any, publisher: Publisher, inserts: list[bool]
) -> None:
    tenant = _tenant(db, 0)  # a cap of 0: every task waits for a slot
    got = submit_task(db, publisher, TaskSubmission(goal="capped"), tenant_id=tenant, policy=Policy())
    # the one statement wrote nothing (the tenant has a cap), then the transaction decided
    assert inserts == [True, False]
    assert got.created and not got.published and got.view is not None and got.view.waiting_for_slot
    with db.session() as s:
        assert s.scalar(select(Task.status).where(Task.tenant_id == tenant)) == "queued"
        assert s.scalar(text("SELECT count(*) FROM tasks WHERE tenant_id = :t"), {"t": tenant}) == 1
        assert s.scalar(text("SELECT count(*) FROM admission_queue WHERE task_id = :t"), {"t": got.task_id}) == 1


def test_a_cap_for_every_tenant_goes_straight_to_the_transaction(
    db: Any, publisher: Publisher, inserts: list[bool]
) -> None:
    tenant = _tenant(db, None)
    got = submit_task(db, publisher, TaskSubmission(goal="platform cap"), tenant_id=tenant, policy=Policy(None, 10_000))
    assert inserts == [False] and got.created


def test_a_replayed_idempotency_key_is_answered_from_the_transaction(
    db: Any, publisher: Publisher, inserts: list[bool]
) -> None:
    tenant, key = _tenant(db, None), f"k-{uuid.uuid4()}"
    first = submit_task(db, publisher, TaskSubmission(goal="once"), tenant_id=tenant, idempotency_key=key)
    again = submit_task(db, publisher, TaskSubmission(goal="once"), tenant_id=tenant, idempotency_key=key)
    assert first.created and not again.created and again.task_id == first.task_id
    with pytest.raises(IdempotencyConflict):
        submit_task(db, publisher, TaskSubmission(goal="other"), tenant_id=tenant, idempotency_key=key)
    # the replays' statements wrote nothing, then their transactions found the task
    assert inserts == [True, True, False, True, False]
    with db.session() as s:
        assert s.scalar(text("SELECT count(*) FROM tasks WHERE tenant_id = :t"), {"t": tenant}) == 1
