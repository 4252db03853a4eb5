"""Publishing wake-ups: by task *name*, with publisher confirms, to the priority queue of the phase."""

from __future__ import annotations

import uuid

from celery import Celery

from autogpt_workers.contracts import PHASE_QUEUES, PHASE_TASKS


class Publisher:
    def __init__(self, app: Celery) -> None:
        self.app = app

    def wake(
        self, task_id: uuid.UUID | str, step_index: int, phase: str, priority: int, countdown: float | None = None
    ) -> None:
        """Publish "run ``phase`` of step ``step_index`` of ``task_id``"; returns once the broker confirmed it."""
        self.app.send_task(
            PHASE_TASKS[phase],
            args=[str(task_id), step_index],
            queue=PHASE_QUEUES[phase],
            routing_key=PHASE_QUEUES[phase],
            priority=priority,
            countdown=countdown,
            retry=True,
            retry_policy={"max_retries": 3, "interval_start": 0.1, "interval_step": 0.3, "interval_max": 1.0},
        )
