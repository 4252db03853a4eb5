"""The Celery application: configuration only (no task code is imported until a worker starts).

Durability comes from the ledger (PostgreSQL); the broker carries "run phase P of step k of task T" wake-ups.
The settings below are what make redelivery safe, and ``check_worker_settings`` refuses to start a worker without
them.
"""

from __future__ import annotations

import sys
from typing import Any

from celery import Celery, signals
from kombu import Exchange, Queue

from autogpt_workers.config import Settings, get_settings
from autogpt_workers.contracts import (
    ACT_QUEUE,
    ACT_TASK,
    DEAD_LETTER_EXCHANGE,
    DEAD_LETTER_QUEUE,
    MAX_PRIORITY,
    THINK_QUEUE,
    THINK_TASK,
)
from autogpt_workers.errors import ConfigError

EXCHANGE = Exchange("autogpt", type="direct", durable=True)
DLX = Exchange(DEAD_LETTER_EXCHANGE, type="direct", durable=True)
QUEUE_ARGUMENTS = {
    "x-max-priority": MAX_PRIORITY + 1,
    "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE,
    "x-dead-letter-routing-key": DEAD_LETTER_QUEUE,
}


def work_queues() -> list[Queue]:
    return [
        Queue(name, EXCHANGE, routing_key=name, durable=True, queue_arguments=QUEUE_ARGUMENTS)
        for name in (THINK_QUEUE, ACT_QUEUE)
    ]


def dead_letter_queue() -> Queue:
    return Queue(DEAD_LETTER_QUEUE, DLX, routing_key=DEAD_LETTER_QUEUE, durable=True)


def make_celery(settings: Settings) -> Celery:
    app = Celery("autogpt_workers", broker=settings.broker_url, include=["autogpt_workers.tasks"])
    app.conf.update(
        # -- delivery: ack only after the step's outcome is committed and its successor published
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=False,  # an unexpected crash dead-letters the message; the reaper re-drives
        worker_prefetch_multiplier=1,
        broker_transport_options={"confirm_publish": True},
        broker_connection_retry_on_startup=True,
        broker_heartbeat=30,
        broker_pool_limit=64,
        # -- topology
        task_queues=work_queues(),
        task_default_exchange=EXCHANGE.name,
        task_default_queue=THINK_QUEUE,
        task_routes={THINK_TASK: {"queue": THINK_QUEUE}, ACT_TASK: {"queue": ACT_QUEUE}},
        task_queue_max_priority=MAX_PRIORITY + 1,
        task_default_priority=5,
        task_create_missing_queues=False,
        # -- no result backend: results live in PostgreSQL
        task_ignore_result=True,
        task_store_errors_even_if_ignored=False,
        # -- time limits stay below RabbitMQ's consumer_timeout (checked at start-up)
        task_annotations={
            ACT_TASK: {
                "time_limit": settings.act_time_limit_s,
                "soft_time_limit": max(1.0, settings.act_time_limit_s - 10),
            },
            THINK_TASK: {"time_limit": settings.think_time_limit_s},
        },
        # -- Flower
        worker_send_task_events=True,
        task_send_sent_event=True,
        worker_hijack_root_logger=False,
        task_serializer="json",
        accept_content=["json"],
        enable_utc=True,
    )
    return app


def check_worker_settings(conf: Any, settings: Settings) -> list[str]:
    """Problems that would make redelivery unsafe. Empty means the worker may start."""
    problems = []
    if not conf.task_acks_late:
        problems.append("task_acks_late must be True (an early ack loses the step if the worker dies)")
    if not conf.task_reject_on_worker_lost:
        problems.append("task_reject_on_worker_lost must be True (a killed child must requeue its step)")
    if conf.worker_prefetch_multiplier != 1:
        problems.append("worker_prefetch_multiplier must be 1 (prefetched steps wait unacked and block others)")
    if not (conf.broker_transport_options or {}).get("confirm_publish"):
        problems.append("broker_transport_options.confirm_publish must be True (publisher confirms)")
    limit = settings.rabbitmq_consumer_timeout_s
    for name, ann in (conf.task_annotations or {}).items():
        tl = ann.get("time_limit")
        if tl is None or tl >= limit:
            problems.append(f"{name} time_limit ({tl}) must be set below RabbitMQ consumer_timeout ({limit:.0f}s)")
    if not conf.task_annotations:
        problems.append("time limits per task are missing")
    return problems


def ensure_worker_settings(conf: Any, settings: Settings) -> None:
    problems = check_worker_settings(conf, settings)
    if problems:
        raise ConfigError("refusing to start a worker with unsafe settings: " + "; ".join(problems))


def declare_topology(app: Celery) -> None:
    """Declare the work queues and the dead-letter exchange and queue (idempotent)."""
    with app.connection_for_write() as conn:
        channel = conn.default_channel
        for q in [*work_queues(), dead_letter_queue()]:
            q.bind(channel).declare()


app = make_celery(get_settings())


@signals.celeryd_init.connect
def _refuse_unsafe_worker(sender: Any = None, conf: Any = None, **_: Any) -> None:
    """Runs before a worker consumes anything: unsafe settings stop it with a clear message."""
    settings = get_settings()
    try:
        ensure_worker_settings(conf if conf is not None else app.conf, settings)
    except ConfigError as exc:
        print(f"autogpt-workers: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc
    declare_topology(app)
