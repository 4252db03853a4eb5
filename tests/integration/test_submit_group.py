"""The submit's group commit (``submit.submit_group``): several submits in one statement must write, and answer,
what each would have alone; on real PostgreSQL and RabbitMQ."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from sqlalchemy import event, text
from sqlalchemy.exc import DataError

from autogpt_workers.admission import Policy
from autogpt_workers.broker import Publisher
from autogpt_workers.contracts import TaskSubmission
from autogpt_workers.group_commit import GroupCommit
from autogpt_workers.store.ledger import Ledger
from autogpt_workers.submit import GroupOutcome, IdempotencyConflict, _write_group, submit_group, submit_task
from tests.integration.test_submit_alone import EVERY_COLUMN as EVERY_COLUMN_OF_A_TASK
from tests.integration.test_submit_alone import _rows, _tenant

# and the options' columns too
EVERY_COLUMN = {**EVERY_COLUMN_OF_A_TASK, "profile": None, "webhook_events": ["step.*"]}


class HeldGroup:
    """A group whose first write waits for ``release``: the submits made meanwhile queue, and are then written
    together in the next batch (what the API's threads do under load, made deterministic)."""

    def __init__(self, db: Any) -> None:
        self.release = threading.Event()
        self.entered = threading.Event()
        self.sizes: list[int] = []
        ledger = Ledger(db)

        def write(submits: list[Any]) -> list[GroupOutcome]:
            self.sizes.append(len(submits))
            if len(self.sizes) == 1:
                self.entered.set()
                self.release.wait(10)
            return _write_group(ledger, submits)

        self.group: GroupCommit[Any, GroupOutcome] = GroupCommit(write)

    def run_together(self, calls: list[Callable[[], Any]]) -> list[Any]:
        """Run ``calls[0]`` (held in its write), queue the others behind it, release; their results or errors."""
        with ThreadPoolExecutor(len(calls)) as pool:
            futures = [pool.submit(calls[0])]
            assert self.entered.wait(10)
            for i, call in enumerate(calls[1:], 1):
                futures.append(pool.submit(call))
                while len(self.group._waiting) < i:
                    threading.Event().wait(0.002)
            self.release.set()
            return [f.exception(10) or f.result(10) for f in futures]


@pytest.fixture
def statements(db: Any) -> list[str]:
    """The task inserts the engine executes: 'batch' (several tasks in one statement) or 'one'."""
    seen: list[str] = []

    def before(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if "INSERT INTO tasks" in statement or "EXECUTE autogpt_submit" in statement:
            seen.append("batch" if "jsonb_to_recordset" in statement or "autogpt_submit_batch" in statement else "one")

    event.listen(db.engine, "before_cursor_execute", before)
    yield seen
    event.remove(db.engine, "before_cursor_execute", before)


@pytest.mark.parametrize("prepared", [False, True])
def test_a_batch_writes_the_rows_each_submit_writes_alone(
    db: Any, prepared_db: Any, publisher: Publisher, prepared: bool
) -> None:
    tenant = _tenant(db, None)
    database = prepared_db if prepared else db
    held = HeldGroup(database)
    bodies = [{"goal": "plain"}, EVERY_COLUMN, {"goal": "third", "metadata": {"n": 3}}]

    def submit(body: dict[str, Any], key: str, group: Any) -> Any:
        return submit_task(
            database, publisher, TaskSubmission.model_validate(body), tenant_id=tenant, idempotency_key=key,
            additional_input={"x": 1}, group=group,
        )  # fmt: skip

    calls = [lambda b=b, i=i: submit(b, f"g{i}", held.group) for i, b in enumerate([{"goal": "held"}, *bodies])]
    results = held.run_together(calls)
    assert held.sizes == [1, 3]  # the three queued behind the held one went in one statement
    alone = [submit(b, f"a{i}", None) for i, b in enumerate(bodies)]
    for grouped, single in zip(results[1:], alone, strict=True):
        assert grouped.created and single.created
        got, want = _rows(db, grouped.task_id), _rows(db, single.task_id)
        assert got["task"][:6] == want["task"][:6] and got["task"][7:] == want["task"][7:]
        assert got["options"] == want["options"] and got["events"] == want["events"]
        assert got["outbox"] == want["outbox"]
        assert grouped.view is not None and single.view is not None
        assert grouped.view.model_dump(exclude={"id", "created_at"}) == single.view.model_dump(
            exclude={"id", "created_at"}
        )


def test_a_batch_leaves_capped_tenants_and_taken_keys_to_the_transaction(
    db: Any, publisher: Publisher, statements: list[str]
) -> None:
    open_tenant, capped = _tenant(db, None), _tenant(db, 0)
    held = HeldGroup(db)
    taken = submit_task(db, publisher, TaskSubmission(goal="first"), tenant_id=open_tenant, idempotency_key="taken")
    statements.clear()

    def submit(goal: str, tenant: str, key: str | None) -> Any:
        return submit_task(
            db, publisher, TaskSubmission(goal=goal), tenant_id=tenant, idempotency_key=key, policy=Policy(),
            group=held.group,
        )  # fmt: skip

    results = held.run_together(
        [
            lambda: submit("held", open_tenant, None),
            lambda: submit("capped", capped, None),
            lambda: submit("first", open_tenant, "taken"),  # the same body again: the existing task
            lambda: submit("other", open_tenant, "taken"),  # another body: a conflict
            lambda: submit("twice", open_tenant, "twice"),  # the same new key twice in one batch: one task
            lambda: submit("twice", open_tenant, "twice"),
            lambda: submit("fresh", open_tenant, None),
        ]
    )
    assert statements[:2] == ["one", "batch"]  # the held submit alone, then the six together
    held_task, capped_task, replay, conflict, twice_a, twice_b, fresh = results
    assert held_task.created and fresh.created
    assert capped_task.created and capped_task.view.waiting_for_slot  # decided in its transaction, at its cap
    assert not replay.created and replay.task_id == taken.task_id
    assert isinstance(conflict, IdempotencyConflict)
    assert {twice_a.created, twice_b.created} == {True, False} and twice_a.task_id == twice_b.task_id
    with db.session() as s:
        counts = dict(
            s.execute(
                text("SELECT idempotency_key, count(*) FROM tasks WHERE tenant_id = :t GROUP BY 1"), {"t": open_tenant}
            ).all()
        )
        queued = s.scalar(text("SELECT count(*) FROM admission_queue WHERE task_id = :t"), {"t": capped_task.task_id})
    assert counts == {"taken": 1, "twice": 1, None: 2} and queued == 1


def test_a_refused_batch_is_written_alone_and_only_the_bad_submit_fails(db: Any) -> None:
    tenant = _tenant(db, None)
    ledger = Ledger(db)
    good = {"tenant_id": tenant, "goal": "fine", "request_hash": "h", "model": "m"}
    bad = {**good, "goal": "too long a model", "model": "m" * 500}  # tasks.model is varchar(128)
    options = {"source": "native", "base_priority": 5, "profile": None, "webhook_url": None,
               "webhook_events": [], "additional_input": None}  # fmt: skip
    with pytest.raises(DataError):  # one statement for the three: refused whole, nothing written
        ledger.create_tasks_alone([(good, options), (bad, options), (good, options)])
    outcomes = _write_group(ledger, [(good, options), (bad, options), (good, options)])
    assert isinstance(outcomes[1], DataError)
    made = [o for o in outcomes if not isinstance(o, Exception)]
    assert len(made) == 2 and all(o is not None for o in made)
    with db.session() as s:
        ids = s.scalars(text("SELECT id FROM tasks WHERE tenant_id = :t"), {"t": tenant}).all()
    assert sorted(map(str, ids)) == sorted(str(o.task_id) for o in made)  # type: ignore[union-attr]


def test_submits_from_many_threads_each_get_their_own_task(db: Any, publisher: Publisher) -> None:
    tenant = _tenant(db, None)
    group = submit_group(db)

    def submit(i: int) -> Any:
        key = f"k{i % 40}"  # 120 submits, 40 keys: three of each, the same body per key
        return submit_task(
            db, publisher, TaskSubmission(goal=f"goal {i % 40}"), tenant_id=tenant, idempotency_key=key, group=group
        )

    with ThreadPoolExecutor(12) as pool:
        results = list(pool.map(submit, range(120)))
    by_key: dict[int, set[uuid.UUID]] = {}
    for i, result in enumerate(results):
        by_key.setdefault(i % 40, set()).add(result.task_id)
    assert all(len(ids) == 1 for ids in by_key.values())
    assert sum(r.created for r in results) == 40
    assert group.items == 120  # every submit went through the group; a replay's statement wrote nothing
    with db.session() as s:
        assert s.scalar(text("SELECT count(*) FROM tasks WHERE tenant_id = :t"), {"t": tenant}) == 40
        # step 0 of each (a worker of another test may already be running them: later steps are not the submit's)
        steps = s.scalar(
            text(
                "SELECT count(*) FROM steps JOIN tasks ON tasks.id = steps.task_id "
                "WHERE tenant_id = :t AND step_index = 0"
            ),
            {"t": tenant},
        )
    assert steps == 40


def test_without_an_answer_from_the_server_a_batch_fails_whole_and_is_not_retried(
    settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sqlalchemy.exc import OperationalError

    from autogpt_workers.store.db import Database

    nowhere = Database.from_url("postgresql+psycopg2://postgres@127.0.0.1:1/none", pool_size=1, max_overflow=0)
    ledger = Ledger(nowhere)
    alone: list[Any] = []
    monkeypatch.setattr(ledger, "create_task_alone", lambda *a, **k: alone.append(a))
    submit = ({"tenant_id": "t", "goal": "g"}, {"source": "native", "base_priority": 5, "profile": None,
              "webhook_url": None, "webhook_events": [], "additional_input": None})  # fmt: skip
    try:
        with pytest.raises(OperationalError):
            _write_group(ledger, [submit, submit, submit])
    finally:
        nowhere.dispose()
    assert alone == []  # not tried one by one: each would have waited for the same connection

