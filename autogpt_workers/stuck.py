"""The stuck-task detector: unfinished tasks with no progress for a while, and why nothing moves them.

Progress is the latest of the task's last event and its open step's last claim, proposal or creation. A task idle
for at least ``older_than_s`` is reported with one reason (``REASONS``), read from its open step, its lease and
the outbox row of the step's next phase:

==========================  ==========================================================================================
``lease_expired``           a phase's lease expired and nobody re-drove it: is the reaper running?
``phase_running_long``      a phase holds a live lease (its worker heartbeats) but does not finish: slow or hung
``wakeup_unpublished``      the step's wake-up is in the outbox, never published: broker down, or no reaper
``wakeup_not_consumed``     the wake-up was published but never claimed: no worker on the queue, or message lost
``no_wakeup``               the open step has no wake-up at all (ledger inconsistency)
``waiting_for_slot``        never started and held back by a running-task cap (admission queue)
``awaiting_approval``       a proposal waits for a human's approval
``paused``                  paused by a user
``cancel_not_finishing``    cancel requested, the step in flight has not reached a safe point
``no_open_step``            unfinished but has no open step (ledger inconsistency)
==========================  ==========================================================================================

``find_stuck`` lists them (``autogpt-workers stuck``), ``count_stuck`` / ``count_stuck_by_reason`` feed the
``autogpt_stuck_tasks`` gauge.
"""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, or_, select, true

from autogpt_workers.store.db import Database
from autogpt_workers.store.ledger import OPEN_STEP, TERMINAL_TASK
from autogpt_workers.store.models import Outbox, Step, Task, TaskEvent

REASONS = {
    "lease_expired": "lease expired and not re-driven (is the reaper running?)",
    "phase_running_long": "a phase holds a live lease but does not finish (worker slow or hung)",
    "wakeup_unpublished": "wake-up never published (broker down, or no reaper running?)",
    "wakeup_not_consumed": "wake-up published but never claimed (no worker on the queue, or the message was lost)",
    "no_wakeup": "the open step has no wake-up",
    "waiting_for_slot": "never started: held back by a running-task cap",
    "awaiting_approval": "waiting for a human's approval",
    "paused": "paused by a user",
    "cancel_not_finishing": "cancel requested, but the step in flight has not stopped",
    "no_open_step": "unfinished but has no open step",
}


@dataclasses.dataclass(frozen=True)
class StuckTask:
    task_id: uuid.UUID
    tenant_id: str
    status: str
    step_index: int | None
    step_status: str | None
    reason: str  # a key of REASONS
    idle_s: float  # seconds since the task last made progress
    lease_owner: str | None = None

    @property
    def detail(self) -> str:
        return REASONS[self.reason]

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "task_id": str(self.task_id), "detail": self.detail}


def find_stuck(db: Database, older_than_s: float, *, now: datetime | None = None, limit: int = 1000) -> list[StuckTask]:
    """Unfinished tasks idle for at least ``older_than_s`` seconds, most idle first, each with its reason."""
    now = now or datetime.now(UTC)
    # the task's open step is its last one (a step is created when the one before it commits): read the last step
    # by the index, backwards, and keep it if it is open. Filtering on the status inside the LIMIT let PostgreSQL
    # read every step of each task instead (a bitmap scan, then a sort): 173 ms a scrape for 200 running tasks of
    # 1000 steps each, against 4.5 ms now (``python -m bench.history_micro --running-steps 1000``)
    last = (
        select(
            Step.step_index,
            Step.status,
            Step.lease_owner,
            Step.lease_expires_at,
            func.greatest(
                Step.created_at, Step.think_started_at, Step.proposed_at, Step.act_started_at
            ).label("touched_at"),
        )
        .where(Step.task_id == Task.id)
        .order_by(Step.step_index.desc())
        .limit(1)
        .correlate(Task)
        .subquery("last_step")
    )
    step = select(last).where(last.c.status.in_(OPEN_STEP)).lateral("open_step")
    last_event = (
        select(TaskEvent.created_at.label("at"))
        .where(TaskEvent.task_id == Task.id)
        .order_by(TaskEvent.id.desc())
        .limit(1)
        .lateral("last_event")
    )
    progress = func.greatest(Task.created_at, last_event.c.at, step.c.touched_at)
    rows = (
        select(
            Task.id,
            Task.tenant_id,
            Task.status,
            Task.started_at,
            step.c.step_index,
            step.c.status.label("step_status"),
            step.c.lease_owner,
            step.c.lease_expires_at,
            progress.label("progress_at"),
        )
        .select_from(Task)
        .outerjoin(step, true())
        .outerjoin(last_event, true())
        .where(Task.status.not_in(TERMINAL_TASK), progress <= now - timedelta(seconds=older_than_s))
        .order_by(progress)
        .limit(limit)
    )
    with db.session() as s:
        found = s.execute(rows).all()
        outbox = _outbox_rows(s, [(r.id, r.step_index) for r in found if r.step_index is not None])
    return [
        StuckTask(
            task_id=r.id,
            tenant_id=r.tenant_id,
            status=r.status,
            step_index=r.step_index,
            step_status=r.step_status,
            reason=_reason(r, outbox, now),
            idle_s=round((now - r.progress_at).total_seconds(), 1),
            lease_owner=r.lease_owner,
        )
        for r in found
    ]


def count_stuck(db: Database, older_than_s: float) -> int:
    """How many unfinished tasks are idle for at least ``older_than_s`` (the metrics gauge)."""
    return len(find_stuck(db, older_than_s))


def count_stuck_by_reason(db: Database, older_than_s: float) -> dict[str, int]:
    counts = dict.fromkeys(REASONS, 0)
    for t in find_stuck(db, older_than_s):
        counts[t.reason] += 1
    return counts


def _outbox_rows(s: Any, keys: list[tuple[uuid.UUID, int]]) -> dict[tuple[uuid.UUID, int, str], datetime | None]:
    """``{(task, step, phase): published_at}`` for the given open steps."""
    if not keys:
        return {}
    pairs = [and_(Outbox.task_id == t, Outbox.step_index == i) for t, i in keys]
    result: dict[tuple[uuid.UUID, int, str], datetime | None] = {}
    for chunk in range(0, len(pairs), 200):
        rows = s.execute(
            select(Outbox.task_id, Outbox.step_index, Outbox.phase, Outbox.published_at).where(
                or_(*pairs[chunk : chunk + 200])
            )
        ).all()
        result.update({(t, i, p): at for t, i, p, at in rows})
    return result


def _reason(r: Any, outbox: dict[tuple[uuid.UUID, int, str], datetime | None], now: datetime) -> str:
    if r.status == "paused":
        return "paused"
    if r.status == "cancelling":
        return "cancel_not_finishing"
    if r.step_status is None:
        return "no_open_step"
    if r.step_status == "awaiting_approval":
        return "awaiting_approval"
    if r.step_status in ("thinking", "acting"):
        expired = r.lease_expires_at is None or r.lease_expires_at <= now
        return "lease_expired" if expired else "phase_running_long"
    phase = "think" if r.step_status == "pending" else "act"
    key = (r.id, r.step_index, phase)
    if key not in outbox:
        if r.started_at is None and r.step_index == 0:
            return "waiting_for_slot"
        return "no_wakeup"
    return "wakeup_unpublished" if outbox[key] is None else "wakeup_not_consumed"
