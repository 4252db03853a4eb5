"""The reaper: re-drives steps whose lease expired and publishes wake-ups nobody published.

It is the safety net, not the fast path: workers publish their own wake-ups right after commit, and RabbitMQ
redelivers the messages of a dead consumer. Several reapers may run at once (row locks are skipped, and a duplicate
wake-up is harmless because the ledger decides what executes).
"""

from __future__ import annotations

import dataclasses
import threading

import structlog

from autogpt_workers.broker import Publisher
from autogpt_workers.observe import RunObserver
from autogpt_workers.store.ledger import Ledger, Wakeup

log = structlog.get_logger(__name__)


@dataclasses.dataclass(frozen=True)
class ReapReport:
    expired_leases: int
    published: int
    failed_publishes: int


class Reaper:
    def __init__(
        self,
        ledger: Ledger,
        publisher: Publisher,
        outbox_grace_s: float,
        interval_s: float,
        observer: RunObserver | None = None,
    ) -> None:
        self.observer = observer or RunObserver()
        self.ledger = ledger
        self.publisher = publisher
        self.outbox_grace_s = outbox_grace_s
        self.interval_s = interval_s

    def run_once(self) -> ReapReport:
        expired = self.ledger.reap_expired_leases()
        due = {w.outbox_id: w for w in [*expired, *self.ledger.due_wakeups(self.outbox_grace_s)]}
        published, failed = self._publish(list(due.values()))
        self.observer.reaped(len(expired), published)
        if expired or due:
            log.info("reaped", expired_leases=len(expired), published=published, failed_publishes=failed)
        return ReapReport(len(expired), published, failed)

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
