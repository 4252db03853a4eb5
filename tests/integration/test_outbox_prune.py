"""The outbox keeps the wake-ups in flight, not one row per step ever run: ``Ledger.prune_outbox`` (the reaper's,
once a minute) deletes old published wake-ups of closed steps and finished tasks, and nothing else. Real
PostgreSQL and RabbitMQ."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import text

from autogpt_workers.broker import Publisher
from autogpt_workers.reaper import Reaper
from autogpt_workers.store.ledger import Ledger
from tests.integration.conftest import plans_of

# shorter than the default retention (an hour) of any reaper another test runs meanwhile: those leave these rows alone
RETENTION = 600.0


def _task(db: Any, status: str, steps: dict[int, str]) -> uuid.UUID:
    """A task in ``status`` with steps ``{index: status}``, each with a think wake-up published about half an hour
    ago, step 0's first (nothing left for another test's workers or reaper to take)."""
    with db.transaction() as s:
        created = Ledger(db).create_task(s, {"tenant_id": "prune", "goal": "prune test"})
        assert created is not None
        task_id = created.task_id
        s.execute(text("UPDATE tasks SET status = :st WHERE id = :t"), {"st": status, "t": task_id})
        for index, step_status in steps.items():
            s.execute(
                text(
                    "INSERT INTO steps (task_id, step_index, status) VALUES (:t, :i, :st) "
                    "ON CONFLICT (task_id, step_index) DO UPDATE SET status = :st"
                ),
                {"t": task_id, "i": index, "st": step_status},
            )
            s.execute(
                text(
                    "INSERT INTO outbox (task_id, step_index, phase, priority) VALUES (:t, :i, 'think', 5) "
                    "ON CONFLICT ON CONSTRAINT uq_outbox_task_step_phase DO NOTHING"
                ),
                {"t": task_id, "i": index},
            )
        s.execute(  # a second apart, in step order: "oldest first" has one answer
            text(
                "UPDATE outbox SET published_at = now() - interval '30 minutes' + step_index * interval '1 second' "
                "WHERE task_id = :t"
            ),
            {"t": task_id},
        )
    return task_id


def _rows(db: Any, task_id: uuid.UUID) -> list[int]:
    with db.session() as s:
        return list(
            s.scalars(text("SELECT step_index FROM outbox WHERE task_id = :t ORDER BY step_index"), {"t": task_id})
        )


def test_prune_deletes_old_wakeups_of_closed_steps_and_finished_tasks_only(db: Any) -> None:
    running = _task(db, "running", {0: "completed", 1: "completed", 2: "pending"})  # 2: a wake-up that got lost
    paused = _task(db, "paused", {0: "completed", 1: "awaiting_approval"})
    cancelled = _task(db, "cancelled", {0: "completed", 1: "thinking"})  # finished: every wake-up is done with
    recent = _task(db, "running", {0: "completed", 1: "pending"})
    with db.transaction() as s:  # published a minute ago: within the retention
        s.execute(
            text("UPDATE outbox SET published_at = now() - interval '1 minute' WHERE task_id = :t"), {"t": recent}
        )
    unpublished = _task(db, "running", {0: "completed", 1: "pending"})
    with db.transaction() as s:  # never published: the reaper's to publish, never the prune's
        s.execute(text("UPDATE outbox SET published_at = NULL WHERE task_id = :t"), {"t": unpublished})

    Ledger(db).prune_outbox(RETENTION)

    assert _rows(db, running) == [2]  # the open step's wake-up stays: the reaper's re-drive needs it
    assert _rows(db, paused) == [1]
    assert _rows(db, cancelled) == []
    assert _rows(db, recent) == [0, 1]
    assert _rows(db, unpublished) == [0, 1]


def test_prune_takes_the_oldest_first_and_at_most_its_limit(db: Any) -> None:
    ledger = Ledger(db)
    ledger.prune_outbox(RETENTION)  # whatever earlier tests left
    task = _task(db, "completed", {0: "completed", 1: "completed", 2: "completed"})
    assert ledger.prune_outbox(RETENTION, limit=2) == 2
    assert _rows(db, task) == [2]
    assert ledger.prune_outbox(RETENTION, limit=2) == 1
    assert _rows(db, task) == [] and ledger.prune_outbox(RETENTION) == 0


def test_a_late_delivery_of_a_pruned_wakeup_is_settled_as_committed(db: Any) -> None:
    """The wake-up of a step committed long ago arrives (a queue backlog older than the retention): its claim finds
    the step committed, as it would with the row still there."""
    task = _task(db, "running", {0: "completed", 1: "pending"})
    Ledger(db).prune_outbox(RETENTION)
    assert _rows(db, task) == [1]
    claim = Ledger(db).claim(task, 0, "think", "late-worker", lease_ttl_s=30, max_deliveries=5)
    assert claim.outcome.value == "committed"
    assert _rows(db, task) == [1]


def test_the_reaper_prunes_at_most_once_a_minute_and_not_at_all_with_no_retention(db: Any) -> None:
    from autogpt_workers.celery_app import app

    ledger = Ledger(db)
    keep_all = Reaper(ledger, Publisher(app), outbox_grace_s=3600, interval_s=1)
    first = _task(db, "completed", {0: "completed"})
    keep_all.run_once()
    assert _rows(db, first) == [0]
    reaper = Reaper(ledger, Publisher(app), outbox_grace_s=3600, interval_s=1, outbox_retention_s=RETENTION)
    reaper.run_once()
    assert _rows(db, first) == []
    second = _task(db, "completed", {0: "completed"})
    reaper.run_once()  # within the minute: left for the next prune
    assert _rows(db, second) == [0]


def test_the_prune_reads_the_published_rows_by_their_index(db: Any) -> None:
    """Its round reads the rows past the cutoff through ``ix_outbox_published`` (sequential scans priced out, as
    the other periodic queries' plans are checked): not the whole outbox each minute."""
    [plan] = plans_of(db, lambda: Ledger(db).prune_outbox(RETENTION))
    assert "ix_outbox_published" in plan, plan
