"""The floor: a raw Celery continuation on the platform's broker with the platform's own Celery settings.

The app is built by the platform's ``make_celery`` (so ``acks_late``, ``reject_on_worker_lost``, prefetch 1,
publisher confirms, task events and JSON are exactly the platform's), with its own queues. Two tasks:

- ``bench.floor.hop``: a no-op that publishes its successor. A chain of two hops per step alternates between a
  "think" queue (thread pool) and an "act" queue (prefork), as a step whose command runs on the act queue does;
  a chain of one hop per step stays on the "think" queue, as a step whose command the think worker runs itself
  (``runs_inline``) does. Each step boundary appends ``chain step time`` to a file;
- ``bench.floor.noop``: a no-op that appends its completion time to a file.

Run a worker: ``python -m celery -A bench.floor_app worker -Q bench.floor.think --pool threads ...``.
"""

from __future__ import annotations

import os
import time

from kombu import Queue

from autogpt_workers.celery_app import EXCHANGE, QUEUE_ARGUMENTS, make_celery
from autogpt_workers.config import get_settings

THINK_QUEUE = "bench.floor.think"
ACT_QUEUE = "bench.floor.act"
NOOP_QUEUE = "bench.floor.noop"
HOP_TASK = "bench.floor.hop"
NOOP_TASK = "bench.floor.noop"
RETRY_POLICY = {"max_retries": 3, "interval_start": 0.1, "interval_step": 0.3, "interval_max": 1.0}

app = make_celery(get_settings())
app.main = "bench_floor"
app.conf.update(
    include=[],
    task_queues=[
        Queue(name, EXCHANGE, routing_key=name, durable=True, queue_arguments=QUEUE_ARGUMENTS)
        for name in (THINK_QUEUE, ACT_QUEUE, NOOP_QUEUE)
    ],
    task_default_queue=NOOP_QUEUE,
    task_routes={NOOP_TASK: {"queue": NOOP_QUEUE}},
    task_annotations={HOP_TASK: {"time_limit": 60}, NOOP_TASK: {"time_limit": 60}},
)


def declare_queues() -> None:
    """Declare the floor's queues (idempotent), so messages published before a worker starts are kept."""
    with app.connection_for_write() as conn:
        for q in app.conf.task_queues:
            q.bind(conn.default_channel).declare()


def _append(path: str, data: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data.encode())
    finally:
        os.close(fd)


def hop_queue(hop_index: int, hops_per_step: int = 2) -> str:
    return THINK_QUEUE if hops_per_step == 1 or hop_index % 2 == 0 else ACT_QUEUE


def publish_hop(out_path: str, chain: str, hop_index: int, total_hops: int, hops_per_step: int = 2) -> None:
    """Publish hop ``hop_index`` as the platform publishes a wake-up: by name, confirmed, with a priority."""
    queue = hop_queue(hop_index, hops_per_step)
    app.send_task(
        HOP_TASK,
        args=[out_path, chain, hop_index, total_hops, hops_per_step],
        queue=queue,
        routing_key=queue,
        priority=5,
        retry=True,
        retry_policy=RETRY_POLICY,
    )


@app.task(name=HOP_TASK)
def hop(out_path: str, chain: str, hop_index: int, total_hops: int, hops_per_step: int = 2) -> None:
    if (hop_index + 1) % hops_per_step == 0:  # the step's last hop ends it
        _append(out_path, f"{chain} {hop_index // hops_per_step} {time.time():.6f}\n")
    if hop_index + 1 < total_hops:
        publish_hop(out_path, chain, hop_index + 1, total_hops, hops_per_step)


@app.task(name=NOOP_TASK)
def noop(out_path: str) -> None:
    _append(out_path, f"{time.time():.6f}\n")
