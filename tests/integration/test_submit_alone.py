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

# a submit that sets every column the submit writes
EVERY_COLUMN: dict[str, Any] = {
    "goal": "every column",
    "priority": 8,
    "budget": {"max_steps": 7, "max_cost_usd": 0.5},
    "allowed_commands": ["write_file", "finish"],
    "metadata": {"order": 42, "tags": ["a", "b"]},
    "approval": "always",
    "deadline": "2030-01-02T03:04:05+00:00",
}


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


def _replay_a_key(db: Any, submitting: Any, publisher: Publisher) -> str:
    """Submit under one key three times through ``submitting``: the same body twice (one task), then another body
    (a conflict). Returns the tenant."""
    tenant, key = _tenant(db, None), f"k-{uuid.uuid4()}"
    first = submit_task(submitting, publisher, TaskSubmission(goal="once"), tenant_id=tenant, idempotency_key=key)
    again = submit_task(submitting, publisher, TaskSubmission(goal="once"), tenant_id=tenant, idempotency_key=key)
    assert first.created and not again.created and again.task_id == first.task_id
    with pytest.raises(IdempotencyConflict):
        submit_task(submitting, publisher, TaskSubmission(goal="other"), tenant_id=tenant, idempotency_key=key)
    return tenant


def test_a_replayed_idempotency_key_is_answered_from_the_transaction(
    db: Any, publisher: Publisher, inserts: list[bool]
) -> None:
    tenant = _replay_a_key(db, db, publisher)
    # the replays' statements wrote nothing, then their transactions found the task
    assert inserts == [True, True, False, True, False]
    with db.session() as s:
        assert s.scalar(text("SELECT count(*) FROM tasks WHERE tenant_id = :t"), {"t": tenant}) == 1


def _rows(db: Any, task_id: uuid.UUID) -> dict[str, Any]:
    """Every column a submit writes, but the ids and times it makes afresh."""
    with db.session() as s:
        task = s.execute(
            text(
                "SELECT tenant_id, goal, priority, budget, allowed_commands, metadata, idempotency_key, request_hash, "
                "model, approval, deadline, traceparent, allowed_commands IS NULL FROM tasks WHERE id = :t"
            ),
            {"t": task_id},
        ).one()
        options = s.execute(
            text(
                "SELECT source, base_priority, profile, webhook_url, webhook_events, additional_input, "
                "additional_input IS NULL FROM task_options WHERE task_id = :t"
            ),
            {"t": task_id},
        ).all()
        events = s.execute(
            text("SELECT kind, step_index, data FROM task_events WHERE task_id = :t AND kind = 'task.queued'"),
            {"t": task_id},
        ).all()
        outbox = s.execute(
            text("SELECT step_index, phase, priority FROM outbox WHERE task_id = :t AND step_index = 0"), {"t": task_id}
        ).all()
    return {"task": tuple(task), "options": options, "events": events, "outbox": outbox}


@pytest.mark.parametrize(
    "body",
    [
        {"goal": "plain"},
        EVERY_COLUMN,
    ],
)
def test_the_prepared_submit_writes_what_the_text_one_writes(
    db: Any, prepared_db: Any, publisher: Publisher, body: dict[str, Any]
) -> None:
    submission = TaskSubmission.model_validate(body)
    tenant = _tenant(db, None)
    by_text = submit_task(db, publisher, submission, tenant_id=tenant, idempotency_key="t", additional_input={"x": 1})
    by_name = submit_task(
        prepared_db, publisher, submission, tenant_id=tenant, idempotency_key="p", additional_input={"x": 1}
    )
    assert by_text.created and by_name.created and by_name.view is not None
    text_rows, prepared_rows = _rows(db, by_text.task_id), _rows(db, by_name.task_id)
    assert text_rows["task"][7:] == prepared_rows["task"][7:] and text_rows["task"][:6] == prepared_rows["task"][:6]
    assert (text_rows["task"][6], prepared_rows["task"][6]) == ("t", "p")  # the idempotency keys
    assert text_rows["options"] == prepared_rows["options"] and text_rows["events"] == prepared_rows["events"]
    assert text_rows["outbox"] == prepared_rows["outbox"] == [(0, "think", submission.priority)]
    assert by_name.view.created_at is not None and by_name.view.goal == body["goal"]
    with prepared_db.engine.connect() as conn:  # it ran by name
        runs = dict(conn.exec_driver_sql("SELECT name, generic_plans + custom_plans FROM pg_prepared_statements").all())
    assert runs["autogpt_submit_alone_options"] == 1


def test_a_prepared_submit_under_a_cap_or_a_taken_key_takes_the_transaction(
    db: Any, prepared_db: Any, publisher: Publisher
) -> None:
    capped = _tenant(db, 0)
    held = submit_task(prepared_db, publisher, TaskSubmission(goal="capped"), tenant_id=capped, policy=Policy())
    assert held.created and held.view is not None and held.view.waiting_for_slot
    tenant = _replay_a_key(db, prepared_db, publisher)
    with db.session() as s:
        assert s.scalar(text("SELECT count(*) FROM tasks WHERE tenant_id = :t"), {"t": tenant}) == 1
        assert s.scalar(text("SELECT count(*) FROM admission_queue WHERE task_id = :t"), {"t": held.task_id}) == 1
