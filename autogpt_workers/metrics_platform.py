"""Gauges of the platform as a whole, read at scrape time from PostgreSQL (the ledger) and RabbitMQ (management
API). One process serves them (the reaper by default), so they are not summed across worker processes.

==================================================  =====================================================
autogpt_active_agents                               tasks running now
autogpt_tasks{status}                               tasks in each non-terminal status
autogpt_outbox_pending                              committed wake-ups not yet published
autogpt_outbox_lag_seconds                          age of the oldest unpublished wake-up (0: none)
autogpt_stuck_tasks                                 unfinished tasks nothing moves (human waits excluded)
autogpt_stuck_tasks_by_reason{reason}               the same by the detector's reason (``autogpt_workers.stuck``)
autogpt_queue_messages{queue,state}                 state = ready | unacked; queue = think | act | dead
autogpt_queue_consumers{queue}                      consumers attached to the queue
autogpt_queue_oldest_message_age_seconds{queue}     the oldest message's age (0: the queue is empty)
autogpt_dead_letter_messages                        messages in the dead-letter queue
autogpt_platform_up{source}                         1 when the source (database, broker) answered
==================================================  =====================================================

A source that does not answer yields ``autogpt_platform_up{source} 0`` and none of its gauges (never a stale or
made-up value); the scrape itself still succeeds.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from typing import Any

import structlog
from prometheus_client.core import GaugeMetricFamily
from sqlalchemy import text

from autogpt_workers.queues import ManagementAPIError, QueueReader
from autogpt_workers.store.db import Database

log = structlog.get_logger(__name__)

TERMINAL_STATUSES = ("completed", "failed", "cancelled")
# reasons of the stuck-task detector that are deliberate waits, not faults: not counted in autogpt_stuck_tasks
WAITING_REASONS = frozenset({"awaiting_approval", "paused", "waiting_for_slot"})

_TASKS_BY_STATUS = text(
    "SELECT status, count(*) FROM tasks WHERE status NOT IN ('completed', 'failed', 'cancelled') GROUP BY status"
)
_OUTBOX = text(
    "SELECT count(*), COALESCE(EXTRACT(EPOCH FROM now() - min(created_at)), 0) FROM outbox WHERE published_at IS NULL"
)
# A running task is stuck when no step of it holds a live lease and nothing happened to it for :age seconds.
_STUCK = text(
    """
    SELECT count(*) FROM tasks t
    WHERE t.status = 'running'
      AND NOT EXISTS (SELECT 1 FROM steps s WHERE s.task_id = t.id AND s.lease_expires_at > now())
      AND COALESCE((SELECT max(e.created_at) FROM task_events e WHERE e.task_id = t.id), t.updated_at)
          < now() - make_interval(secs => :age)
    """
)


def _gauge(name: str, doc: str, labels: list[str] | None = None) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=labels)


class PlatformCollector:
    """A ``prometheus_client`` custom collector; register it on the registry a process serves."""

    def __init__(self, db: Database, queues: QueueReader | None, stuck_after_s: float) -> None:
        self.db = db
        self.queues = queues
        self.stuck_after_s = stuck_after_s

    def collect(self) -> Iterator[GaugeMetricFamily]:
        up = _gauge("autogpt_platform_up", "1 when the source answered this scrape.", ["source"])
        try:
            yield from self._database()
            up.add_metric(["database"], 1)
        except Exception as exc:  # the database may be restarting: report it, keep serving the rest
            log.warning("metrics_database_unavailable", error=str(exc))
            up.add_metric(["database"], 0)
        if self.queues is not None:
            try:
                yield from self._broker()
                up.add_metric(["broker"], 1)
            except ManagementAPIError as exc:
                log.warning("metrics_broker_unavailable", error=str(exc))
                up.add_metric(["broker"], 0)
        yield up

    def describe(self) -> list[Any]:
        return []  # collected on demand only (no query at registration)

    def _database(self) -> Iterator[GaugeMetricFamily]:
        with self.db.session() as s:
            by_status = {str(k): int(v) for k, v in s.execute(_TASKS_BY_STATUS).all()}
            pending, lag = s.execute(_OUTBOX).one()
            stuck, by_reason = self._stuck(s)
        active = _gauge("autogpt_active_agents", "Agent tasks running now.")
        active.add_metric([], by_status.get("running", 0))
        tasks = _gauge("autogpt_tasks", "Tasks in each non-terminal status.", ["status"])
        for status in sorted({"queued", "running", *by_status}):
            tasks.add_metric([status], by_status.get(status, 0))
        outbox = _gauge("autogpt_outbox_pending", "Committed wake-ups not yet published.")
        outbox.add_metric([], int(pending))
        outbox_lag = _gauge("autogpt_outbox_lag_seconds", "Age of the oldest unpublished wake-up (0: none).")
        outbox_lag.add_metric([], float(lag))
        stuck_g = _gauge("autogpt_stuck_tasks", "Unfinished tasks nothing moves (approvals, pauses, caps excluded).")
        stuck_g.add_metric([], stuck)
        yield from (active, tasks, outbox, outbox_lag, stuck_g)
        if by_reason is not None:
            reasons = _gauge("autogpt_stuck_tasks_by_reason", "Idle unfinished tasks by reason.", ["reason"])
            for reason, n in sorted(by_reason.items()):
                reasons.add_metric([reason], n)
            yield reasons

    def _stuck(self, session: Any) -> tuple[int, dict[str, int] | None]:
        detector = _stuck_detector()
        if detector is not None:
            try:
                by_reason = {str(k): int(v) for k, v in detector(self.db, self.stuck_after_s).items()}
                return sum(n for r, n in by_reason.items() if r not in WAITING_REASONS), by_reason
            except Exception as exc:  # the detector is another module's: fall back rather than fail the scrape
                log.warning("stuck_detector_failed", error=str(exc))
        return int(session.execute(_STUCK, {"age": self.stuck_after_s}).scalar_one()), None

    def _broker(self) -> Iterator[GaugeMetricFamily]:
        assert self.queues is not None
        stats = self.queues.platform()
        messages = _gauge("autogpt_queue_messages", "Messages in the queue by state.", ["queue", "state"])
        consumers = _gauge("autogpt_queue_consumers", "Consumers attached to the queue.", ["queue"])
        age = _gauge(
            "autogpt_queue_oldest_message_age_seconds", "Age of the queue's oldest message (0: empty).", ["queue"]
        )
        dead = _gauge("autogpt_dead_letter_messages", "Messages in the dead-letter queue.")
        for label, q in stats.items():
            messages.add_metric([label, "ready"], q.ready)
            messages.add_metric([label, "unacked"], q.unacked)
            consumers.add_metric([label], q.consumers)
            if q.oldest_age_s is not None:
                age.add_metric([label], q.oldest_age_s)
            elif q.ready == 0:
                age.add_metric([label], 0.0)
        dead.add_metric([], stats["dead"].depth if "dead" in stats else 0)
        yield from (messages, consumers, age, dead)


def _stuck_detector() -> Any:
    """``autogpt_workers.stuck.count_stuck_by_reason(db, older_than_s)`` when that module exists, else None."""
    try:
        module = importlib.import_module("autogpt_workers.stuck")
    except ImportError:
        return None
    return getattr(module, "count_stuck_by_reason", None)
