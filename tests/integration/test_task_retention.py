"""Finished tasks are deleted once their retention is over (``AUTOGPT_TASK_RETENTION_DAYS``): ``Ledger.
prune_finished_tasks`` (the reaper's, once a minute) deletes the tasks that finished before the cutoff with every
row of theirs, oldest first, and nothing else; the reaper then deletes their stored files. Real PostgreSQL."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import text

from autogpt_workers.artifacts import LocalArtifactStore
from autogpt_workers.broker import Publisher
from autogpt_workers.reaper import Reaper
from autogpt_workers.store.ledger import ClaimOutcome, Ledger
from tests.integration.conftest import plans_of

DAY = 86_400.0
# the tasks these tests finish are backdated by weeks: no other test's task (finished now, if ever) is old enough
RETENTION = 7 * DAY
PER_TASK = ("steps", "task_events", "outbox", "artifacts", "task_options")


def _task(db: Any, status: str, finished_days_ago: float | None, steps: int = 2) -> uuid.UUID:
    """A task in ``status`` with its options and ``steps`` committed steps, each with an event, a wake-up and an
    artifact's record, finished that many days ago (None: not finished)."""
    with db.transaction() as s:
        created = Ledger(db).create_task(s, {"tenant_id": "retention", "goal": "retention test"})
        assert created is not None
        task_id = created.task_id
        s.execute(
            text(
                "UPDATE tasks SET status = :st, finished_at = now() - make_interval(secs => :ago), "
                "created_at = now() - interval '60 days' WHERE id = :t"
            ),
            {"st": status, "ago": (finished_days_ago or 0) * DAY, "t": task_id},
        )
        if finished_days_ago is None:
            s.execute(text("UPDATE tasks SET finished_at = NULL WHERE id = :t"), {"t": task_id})
        s.execute(
            text("INSERT INTO task_options (task_id, base_priority, webhook_events) VALUES (:t, 5, '{}') "
                 "ON CONFLICT DO NOTHING"),
            {"t": task_id},
        )  # fmt: skip
        for index in range(steps):
            values = {"t": task_id, "i": index}
            s.execute(
                text(
                    "INSERT INTO steps (task_id, step_index, status) VALUES (:t, :i, 'completed') "
                    "ON CONFLICT (task_id, step_index) DO UPDATE SET status = 'completed'"
                ),
                values,
            )
            s.execute(
                text("INSERT INTO task_events (task_id, kind, step_index, data) VALUES (:t, 'step.completed', :i, "
                     "'{}'::jsonb)"),
                values,
            )  # fmt: skip
            s.execute(
                text(
                    "INSERT INTO outbox (task_id, step_index, phase, priority, published_at) "
                    "VALUES (:t, :i, 'think', 5, now()) ON CONFLICT ON CONSTRAINT uq_outbox_task_step_phase DO NOTHING"
                ),
                values,
            )
            s.execute(
                text(
                    "INSERT INTO artifacts (id, task_id, step_index, relative_path, size_bytes, sha256) "
                    "VALUES (gen_random_uuid(), :t, :i, 'out_' || :i || '.txt', 1, 'x')"
                ),
                values,
            )
    return task_id


def _exists(db: Any, task_id: uuid.UUID) -> bool:
    with db.session() as s:
        return bool(s.scalar(text("SELECT count(*) FROM tasks WHERE id = :t"), {"t": task_id}))


def _rows(db: Any, task_id: uuid.UUID) -> dict[str, int]:
    with db.session() as s:
        return {
            table: int(s.scalar(text(f"SELECT count(*) FROM {table} WHERE task_id = :t"), {"t": task_id}))
            for table in PER_TASK
        }


def _prune_all(ledger: Ledger) -> list[uuid.UUID]:
    """Every task past the retention, whatever earlier runs of this module left."""
    deleted, batch = [], ledger.prune_finished_tasks(RETENTION)
    while batch:
        deleted += batch
        batch = ledger.prune_finished_tasks(RETENTION)
    return deleted


def test_finished_tasks_past_the_retention_go_with_every_row_of_theirs_and_nothing_else_does(db: Any) -> None:
    old = {status: _task(db, status, finished_days_ago=30) for status in ("completed", "failed", "cancelled")}
    recent = _task(db, "completed", finished_days_ago=2)
    # unfinished tasks stay however old they are (a stray finished_at on one changes nothing)
    paused = _task(db, "paused", finished_days_ago=None)
    running = _task(db, "running", finished_days_ago=30)
    assert all(_rows(db, old["completed"]).values())  # a row in each table to delete

    deleted = _prune_all(Ledger(db))

    assert set(old.values()) <= set(deleted) and not {recent, paused, running} & set(deleted)
    for task_id in old.values():
        assert not _exists(db, task_id)
        assert _rows(db, task_id) == dict.fromkeys(PER_TASK, 0)
    for task_id in (recent, paused, running):
        assert _exists(db, task_id) and _rows(db, task_id)["steps"] == 2


def test_the_prune_takes_the_oldest_first_and_at_most_its_limit(db: Any) -> None:
    ledger = Ledger(db)
    _prune_all(ledger)
    newer, oldest, older = (_task(db, "completed", days, steps=1) for days in (10, 40, 20))
    assert set(ledger.prune_finished_tasks(RETENTION, limit=2)) == {oldest, older}
    assert _exists(db, newer)
    assert ledger.prune_finished_tasks(RETENTION, limit=2) == [newer]
    assert ledger.prune_finished_tasks(RETENTION) == []


def test_a_late_delivery_for_a_deleted_task_finds_it_missing(db: Any) -> None:
    task = _task(db, "completed", finished_days_ago=30)
    _prune_all(Ledger(db))
    claim = Ledger(db).claim(task, 2, "think", "late-worker", lease_ttl_s=30, max_deliveries=5)
    assert claim.outcome == ClaimOutcome.missing


def test_the_reaper_deletes_old_tasks_and_their_files_once_a_minute_and_none_with_no_retention(
    db: Any, tmp_path: Path
) -> None:
    from autogpt_workers.celery_app import app

    ledger = Ledger(db)
    _prune_all(ledger)
    store = LocalArtifactStore(tmp_path / "store")

    def with_files(task_id: uuid.UUID) -> uuid.UUID:
        for name in ("out_0.txt", "notes/out_1.txt"):
            path = store.task_dir(str(task_id)) / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("result")
        return task_id

    first, recent = with_files(_task(db, "completed", 30)), with_files(_task(db, "failed", 1))
    keep_all = Reaper(ledger, Publisher(app), outbox_grace_s=3600, interval_s=1, artifacts=store)
    keep_all.run_once()
    assert _exists(db, first) and store.list(str(first)) == ["notes/out_1.txt", "out_0.txt"]

    reaper = Reaper(ledger, Publisher(app), outbox_grace_s=3600, interval_s=1, task_retention_s=RETENTION,
                    artifacts=store)  # fmt: skip
    reaper.run_once()
    assert not _exists(db, first) and not store.task_dir(str(first)).exists()
    assert _exists(db, recent) and store.list(str(recent)) == ["notes/out_1.txt", "out_0.txt"]
    second = with_files(_task(db, "cancelled", 30))
    reaper.run_once()  # within the minute: left for the next round
    assert _exists(db, second) and store.list(str(second))


def test_the_prune_reads_the_finished_tasks_by_their_index(db: Any) -> None:
    """Its round reads the tasks past the cutoff through ``ix_tasks_finished`` (sequential scans priced out, as the
    other periodic queries' plans are checked): not every task ever run, each minute."""
    [plan] = plans_of(db, lambda: Ledger(db).prune_finished_tasks(RETENTION))
    assert "ix_tasks_finished" in plan, plan


def test_files_the_store_cannot_delete_are_counted_and_the_round_goes_on(db: Any, tmp_path: Path) -> None:
    """The rows go first: a store that fails leaves the files behind, counted as ``artifacts_not_deleted``, and the
    other tasks of the batch are still deleted, files and all."""
    from autogpt_workers.celery_app import app
    from autogpt_workers.observe import RunObserver

    class Failing(LocalArtifactStore):
        def delete_task(self, task_id: str) -> int:
            if task_id == str(stuck):
                raise OSError("the store is down")
            return super().delete_task(task_id)

    class Errors(RunObserver):
        def __init__(self) -> None:
            self.errors: list[str] = []
            self.pruned = 0

        def error(self, error_type: str) -> None:
            self.errors.append(error_type)

        def tasks_pruned(self, count: int) -> None:
            self.pruned += count

    ledger = Ledger(db)
    _prune_all(ledger)
    store = Failing(tmp_path / "store")
    stuck, fine = _task(db, "completed", 30), _task(db, "failed", 31)
    for task_id in (stuck, fine):
        (store.task_dir(str(task_id))).mkdir(parents=True)
        (store.task_dir(str(task_id)) / "out.txt").write_text("result")
    observer = Errors()
    reaper = Reaper(ledger, Publisher(app), outbox_grace_s=3600, interval_s=1, observer=observer,
                    task_retention_s=RETENTION, artifacts=store)  # fmt: skip
    reaper.run_once()
    assert not _exists(db, stuck) and not _exists(db, fine)
    assert observer.errors == ["artifacts_not_deleted"] and observer.pruned == 2
    assert store.list(str(stuck)) == ["out.txt"] and not store.task_dir(str(fine)).exists()
