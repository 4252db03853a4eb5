"""The reaper: re-drives steps whose lease expired, publishes wake-ups nobody published, and ends tasks past their
deadline that no worker is on (paused, waiting for approval or in a queue; a task being worked on fails at its
step's next boundary instead). Once a minute it deletes the outbox's old published wake-ups of closed steps
(``Ledger.prune_outbox``) and, when a task retention is set, the tasks that finished longer ago than that, with their
steps, events and stored files (``Ledger.prune_finished_tasks``, then the artifact store).

It is the safety net, not the fast path: workers publish their own wake-ups right after commit, and RabbitMQ
redelivers the messages of a dead consumer. Several reapers may run at once (row locks are skipped, and a duplicate
wake-up is harmless because the ledger decides what executes).
"""

from __future__ import annotations

import dataclasses
import threading
import time
import uuid

import structlog

from autogpt_workers import lifecycle
from autogpt_workers.artifacts.base import ArtifactStore
from autogpt_workers.broker import Publisher
from autogpt_workers.observe import RunObserver
from autogpt_workers.store.ledger import Ledger, Wakeup

log = structlog.get_logger(__name__)

# the outbox's old rows are deleted at most this often, or once per retention period if that is shorter (a round of
# the reaper is seconds)
PRUNE_EVERY_S = 60.0
# a prune goes on while its batches come back full, for at most this long (10,000 rows take about 0.1 s): a backlog
# (the first prune of an old outbox) is worked off over the next minutes without holding up the reaper's round
PRUNE_BUDGET_S = 2.0
PRUNE_BATCH = 10_000
# finished tasks are deleted this many at a time (each with its steps and events: a batch of long tasks is tens of
# thousands of rows), within the same budget, once a minute
RETIRE_BATCH = 100


@dataclasses.dataclass(frozen=True)
class ReapReport:
    expired_leases: int
    published: int
    failed_publishes: int
    deadlines_expired: int = 0
    approvals_expired: int = 0


class Reaper:
    def __init__(
        self,
        ledger: Ledger,
        publisher: Publisher,
        outbox_grace_s: float,
        interval_s: float,
        observer: RunObserver | None = None,
        redrive_after_s: float | None = 600.0,
        approval_timeout_s: float | None = None,
        outbox_retention_s: float = 0.0,
        task_retention_s: float = 0.0,
        artifacts: ArtifactStore | None = None,
    ) -> None:
        self.outbox_retention_s = outbox_retention_s  # 0: the outbox keeps every row
        self._next_prune = 0.0
        self.task_retention_s = task_retention_s  # 0: every task is kept
        self.artifacts = artifacts  # where the deleted tasks' files are (None: the database's rows only)
        self._next_retire = 0.0
        self.approval_timeout_s = approval_timeout_s  # None: a step waits for a human for ever
        self.observer = observer or RunObserver()
        self.ledger = ledger
        self.publisher = publisher
        self.outbox_grace_s = outbox_grace_s
        self.interval_s = interval_s
        self.redrive_after_s = redrive_after_s  # None: never re-publish a consumed-but-lost wake-up

    def run_once(self) -> ReapReport:
        expired = self.ledger.reap_expired_leases()
        late = self.ledger.expire_deadlines()
        stale = [] if self.approval_timeout_s is None else lifecycle.expire_approvals(
            self.ledger.db, self.approval_timeout_s
        )
        orphans = self.ledger.rearm_orphans(self.redrive_after_s) if self.redrive_after_s is not None else []
        if orphans:
            log.warning("orphaned_wakeups_rearmed", count=len(orphans))
        due = {w.outbox_id: w for w in [*expired, *orphans, *self.ledger.due_wakeups(self.outbox_grace_s)]}
        published, failed = self._publish(list(due.values()))
        self.observer.reaped(len(expired), published)
        for _ in [*late, *stale]:
            self.observer.task_ended("failed", None)
        if expired or due or late or stale:
            log.info(
                "reaped", expired_leases=len(expired), published=published, failed_publishes=failed,
                deadlines_expired=len(late), approvals_expired=len(stale),
            )
        self._prune()
        self._retire()
        return ReapReport(len(expired), published, failed, len(late), len(stale))

    def _prune(self) -> None:
        if self.outbox_retention_s <= 0 or time.monotonic() < self._next_prune:
            return
        self._next_prune = time.monotonic() + min(PRUNE_EVERY_S, self.outbox_retention_s)
        pruned, until = 0, time.monotonic() + PRUNE_BUDGET_S
        try:
            while True:
                deleted = self.ledger.prune_outbox(self.outbox_retention_s, PRUNE_BATCH)
                pruned += deleted
                if deleted < PRUNE_BATCH or time.monotonic() >= until:
                    break
        except Exception as exc:  # the database may be restarting: the rows wait for the next prune
            log.warning("outbox_prune_failed", error=str(exc).splitlines()[0] if str(exc) else repr(exc))
        if pruned:
            log.info("outbox_pruned", deleted=pruned, older_than_s=self.outbox_retention_s)

    def _retire(self) -> None:
        """Delete the tasks that finished more than ``task_retention_s`` ago (oldest first, batches of
        ``RETIRE_BATCH`` while they come back full, within ``PRUNE_BUDGET_S``), then each one's stored files.

        The rows go first, in one transaction per batch: a task's files left behind by a failure (logged, counted as
        the error ``artifacts_not_deleted``) are unreachable but harmless, while files deleted first under rows that
        stayed would be artifacts the API lists and cannot serve."""
        if self.task_retention_s <= 0 or time.monotonic() < self._next_retire:
            return
        self._next_retire = time.monotonic() + PRUNE_EVERY_S
        pruned, files, until = 0, 0, time.monotonic() + PRUNE_BUDGET_S
        try:
            while True:
                deleted = self.ledger.prune_finished_tasks(self.task_retention_s, RETIRE_BATCH)
                pruned += len(deleted)
                self.observer.tasks_pruned(len(deleted))
                files += self._delete_files(deleted)
                if len(deleted) < RETIRE_BATCH or time.monotonic() >= until:
                    break
        except Exception as exc:  # the database may be restarting: the tasks wait for the next round
            log.warning("task_prune_failed", error=str(exc).splitlines()[0] if str(exc) else repr(exc))
        if pruned:
            log.info("tasks_pruned", deleted=pruned, files_deleted=files,
                     older_than_days=round(self.task_retention_s / 86400, 3))  # fmt: skip

    def _delete_files(self, task_ids: list[uuid.UUID]) -> int:
        if self.artifacts is None:
            return 0
        deleted = 0
        for task_id in task_ids:
            try:
                deleted += self.artifacts.delete_task(str(task_id))
            except Exception as exc:  # the store may be down: these files stay, unreachable (see ``_retire``)
                self.observer.error("artifacts_not_deleted")
                log.warning("task_files_not_deleted", task_id=str(task_id), error=str(exc) or repr(exc))
        return deleted

    def run_forever(self, stop: threading.Event) -> None:
        log.info("reaper_started", interval_s=self.interval_s, outbox_grace_s=self.outbox_grace_s)
        while not stop.is_set():
            try:
                self.run_once()
            except Exception as exc:  # the database or broker may be restarting: try again next round
                log.warning("reaper_round_failed", error=str(exc))
            stop.wait(self.interval_s)

    def _publish(self, wakeups: list[Wakeup]) -> tuple[int, int]:
        done: list[int] = []
        failed = 0
        for w in wakeups:
            try:
                self.publisher.wake(w.task_id, w.step_index, w.phase, w.priority)
                done.append(w.outbox_id)
            except Exception as exc:
                failed += 1
                log.warning("republish_failed", task_id=str(w.task_id), step=w.step_index, error=str(exc))
                break  # the broker is likely down: leave the rest for the next round
        self.ledger.mark_published(done)
        return len(done), failed
