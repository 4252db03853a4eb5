"""Admission: when an accepted task may start running.

Caps. A tenant runs at most its ``max_running`` tasks at once (its own limit, else ``tenant_max_running``), and all
tenants together at most ``scheduler_max_running``; ``None`` means no cap. A task over a cap is accepted all the
same: it stays ``queued`` with no wake-up, in ``admission_queue``, and the dispatcher admits it when a slot frees.
"Running" means accepted, admitted and not finished (a paused task or one waiting for approval holds its slot).

Backlog (on by default, see ``autogpt_workers.backlog``). Without any cap, a task also waits in the admission queue
while the workers are all busy (``scheduler_max_ready`` think wake-ups ready in RabbitMQ) or admissible tasks
already wait; the dispatcher then admits only as many as keep that many ready. So under load the order of new
tasks is decided here, not by RabbitMQ's first in, first out within a priority level.

Order. Waiting tasks are admitted by effective priority first; within a priority level, the tenant with the fewest
running tasks goes first (fair share: one tenant's burst cannot starve another's tasks); then submission order.

Urgency (the seed's urgency factor, on the 0-9 scale). A task with a deadline gains up to ``deadline_max_boost``
levels as the deadline nears: nothing until ``deadline_horizon_s`` before it, then linearly more, the full boost
once the deadline has passed. The effective priority is written to ``tasks.priority``, which the ledger gives to
every wake-up it publishes, so a running task's later steps jump the queue too; a wake-up already published and not
yet taken is published again at the raised priority (``refresh_priorities``; the copy left behind is settled by the
ledger's claim as a duplicate).

Submissions and admission rounds decide under one PostgreSQL advisory lock, so two API processes cannot both
take the last slot.
"""

from __future__ import annotations

import dataclasses
import math
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import structlog
from sqlalchemy import delete, exists, func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from autogpt_workers.backlog import BacklogFlag, backlog_signal
from autogpt_workers.broker import Publisher
from autogpt_workers.config import Settings
from autogpt_workers.contracts import MAX_PRIORITY
from autogpt_workers.store.db import Database
from autogpt_workers.store.gateway import AdmissionQueue, TaskOptions, Tenant
from autogpt_workers.store.ledger import TERMINAL_TASK, Ledger, Wakeup, emit, reprioritise_wakeups
from autogpt_workers.store.models import Outbox, Task
from autogpt_workers.wake import Wake

log = structlog.get_logger(__name__)

ADMISSION_LOCK = 727275  # pg advisory lock key (the migrator uses 727274)
FLAG_GRACE_S = 2.0  # the admission loop stays awake this long after it last raised the backlog flag


@dataclasses.dataclass(frozen=True)
class Policy:
    tenant_max_running: int | None = None
    max_running: int | None = None
    horizon_s: float = 3600.0
    max_boost: int = 4
    max_ready: int | None = None  # the backlog gate (None: off)
    # why new tasks should wait for the backlog now (the dispatcher's flag), or None
    backlog: Callable[[], str | None] | None = dataclasses.field(default=None, compare=False)
    # the same without I/O: (fresh, reason) of the last reading (``BacklogSignal.cached``)
    backlog_cached: Callable[[], tuple[bool, str | None]] | None = dataclasses.field(default=None, compare=False)

    @classmethod
    def from_settings(cls, settings: Settings) -> Policy:
        max_ready = settings.scheduler_max_ready or None
        signal = backlog_signal(settings.redis_url, settings.database_url) if max_ready is not None else None
        return cls(
            settings.tenant_max_running,
            settings.scheduler_max_running,
            settings.deadline_horizon_s,
            settings.deadline_max_boost,
            max_ready,
            signal.reason if signal is not None else None,
            signal.cached if signal is not None else None,
        )

    def backlogged(self) -> str | None:
        return self.backlog() if self.backlog is not None else None

    def backlog_known(self) -> tuple[bool, str | None]:
        """``(known, reason)`` without I/O, for an event loop: ``known`` is False when only ``backlogged()``, which
        may read Redis, can tell."""
        if self.backlog is None:
            return True, None
        if self.backlog_cached is None:
            return False, None
        return self.backlog_cached()

    def caps_every_tenant(self) -> bool:
        """Whether a running-task cap applies to every tenant (the default per-tenant one or the platform's)."""
        return self.tenant_max_running is not None or self.max_running is not None


def urgency_boost(deadline: datetime | None, now: datetime, policy: Policy) -> int:
    if deadline is None or policy.max_boost == 0:
        return 0
    remaining = (deadline - now).total_seconds()
    if remaining >= policy.horizon_s:
        return 0
    if remaining <= 0:
        return policy.max_boost
    return math.ceil(policy.max_boost * (1 - remaining / policy.horizon_s))


def effective_priority(base: int, deadline: datetime | None, policy: Policy, now: datetime | None = None) -> int:
    return min(MAX_PRIORITY, base + urgency_boost(deadline, now or datetime.now(UTC), policy))


def _running(tenant_id: str | None = None) -> Any:
    """Tasks holding a slot: not finished and not waiting for admission."""
    stmt = (
        select(func.count())
        .select_from(Task)
        .where(Task.status.not_in(TERMINAL_TASK), ~exists().where(AdmissionQueue.task_id == Task.id))
    )
    return stmt if tenant_id is None else stmt.where(Task.tenant_id == tenant_id)


def hold_if_capped(
    s: Session, task_id: uuid.UUID, tenant_id: str, policy: Policy, backlog: str | None = None
) -> str | None:
    """In the submitting transaction, after the task and its first wake-up were inserted: if a cap is reached (or
    earlier tasks already wait, or ``backlog`` says why the workers cannot take it now), take the wake-up back and
    queue the task. Returns why it waits, or None."""
    tenant_cap = s.execute(select(Tenant.max_running).where(Tenant.id == tenant_id)).scalar_one_or_none()
    tenant_cap = tenant_cap if tenant_cap is not None else policy.tenant_max_running
    if backlog is not None:  # no slot is taken: no need to decide under the lock
        return _hold(s, task_id, tenant_id, backlog)
    if tenant_cap is None and policy.max_running is None:
        return None
    s.execute(select(func.pg_advisory_xact_lock(ADMISSION_LOCK)))
    waiting = select(AdmissionQueue.task_id).limit(1)
    if policy.max_running is None:
        waiting = waiting.where(AdmissionQueue.tenant_id == tenant_id)
    reason = None
    if s.execute(waiting).first() is not None:
        reason = "earlier tasks are waiting for a slot"
    elif tenant_cap is not None and s.execute(_running(tenant_id).where(Task.id != task_id)).scalar_one() >= tenant_cap:
        reason = f"the tenant's cap of {tenant_cap} running tasks is reached"
    elif (
        policy.max_running is not None
        and s.execute(_running().where(Task.id != task_id)).scalar_one() >= policy.max_running
    ):
        reason = f"the platform's cap of {policy.max_running} running tasks is reached"
    if reason is None:
        return None
    return _hold(s, task_id, tenant_id, reason)


def _hold(s: Session, task_id: uuid.UUID, tenant_id: str, reason: str) -> str:
    s.execute(delete(Outbox).where(Outbox.task_id == task_id))
    s.execute(insert(AdmissionQueue).values(task_id=task_id, tenant_id=tenant_id))
    emit(s, task_id, "task.waiting", reason=reason)
    return reason


def _below(count: int, cap: int | None) -> bool:
    return cap is None or count < cap


@dataclasses.dataclass
class _Waiting:
    task_id: uuid.UUID
    tenant_id: str
    enqueued_at: datetime
    priority: int  # effective, now


def _own_or(own: int | None, default: int | None) -> int | None:
    return own if own is not None else default


class Admitter:
    """The dispatcher's half of admission: admits waiting tasks as slots free, and raises priorities as
    deadlines near."""

    def __init__(
        self,
        db: Database,
        publisher: Publisher,
        policy: Policy,
        batch: int = 500,
        ready: Callable[[], int | None] | None = None,
        flag: BacklogFlag | None = None,
        wake: Wake | None = None,
    ) -> None:
        """``ready`` counts the think wake-ups ready in RabbitMQ now (None: unknown); with ``policy.max_ready``
        it bounds each round's admissions, and ``flag`` tells the API processes to hold new tasks meanwhile.
        ``wake`` (the dispatcher's): a round looks in the admission queue only when a task may wait there (see
        ``_idle``); without one every round looks."""
        self.db = db
        self.ledger = Ledger(db)
        self.publisher = publisher
        self.policy = policy
        self.batch = batch
        self.ready = ready
        self.flag = flag
        # how many one round may admit while the backlog gate is on: ``max_ready`` less what is ready, doubled
        # (up to ``batch``) each round the think queue is found drained with tasks still waiting, so admissions
        # keep up with workers that take tasks faster than ``max_ready`` a round; back to ``max_ready`` when any
        # is left ready
        self._room = policy.max_ready or 0
        self.waiting = 0  # admissible tasks left waiting after the last round
        self.wake = wake
        self._flag_raised_at = -1e18  # when this dispatcher last raised the backlog flag (monotonic)

    def admit_round(self) -> int:
        """Admit what the caps and the backlog allow now; publish their first wake-ups. Returns how many."""
        room = None
        ready = None
        if self.policy.max_ready is not None:
            ready = self.ready() if self.ready is not None else None
            if ready is None or ready > 0:  # any wake-up left ready: no thread is free, no room to grow
                self._room = self.policy.max_ready
            elif ready == 0 and self.waiting:
                self._room = min(self.batch, max(self._room, self.policy.max_ready) * 2)
            room = max(0, self._room - (ready or 0))
        wakeups: list[Wakeup] = []
        if self.wake is None or self.wake.should_look():
            with self.db.transaction() as s:
                if not s.execute(select(func.pg_try_advisory_xact_lock(ADMISSION_LOCK))).scalar_one():
                    if self.wake is not None:
                        self.wake.notify()  # look again next round
                    return 0  # another dispatcher is at it
                wakeups, self.waiting = self._admit(s, room)
                idle = self.wake is not None and self._idle(s)
            if self.wake is not None:
                self.wake.looked(idle=idle)
        if self.flag is not None and self.policy.max_ready is not None:
            if ready is not None and ready >= self.policy.max_ready:
                self.flag.set(f"the workers are busy: {ready} wake-ups wait in the think queue", self.waiting)
                self._raised()
            elif self.waiting:
                self.flag.set("earlier tasks are waiting for free workers", self.waiting)
                self._raised()
            else:
                self.flag.set(None)
        self._publish(wakeups, "admission_publish_deferred")
        if wakeups:
            log.info("tasks_admitted", count=len(wakeups))
        return len(wakeups)

    def _raised(self) -> None:
        """The backlog flag is up: the API processes hold new tasks, so look again from the next round on."""
        self._flag_raised_at = time.monotonic()
        if self.wake is not None:
            self.wake.notify()

    def _idle(self, s: Session) -> bool:
        """Whether no task can be held without this dispatcher seeing it coming: the admission queue is empty (a
        paused task in it keeps the loop looking), the backlog flag has been down for ``FLAG_GRACE_S`` (the API
        processes read it at most ``refresh_s`` late, and a submission holds its task in a transaction of a few
        milliseconds), and no running-task cap is set, neither the policy's nor any tenant's. A task held all the
        same (a cap set since, a submission slower than the grace) waits at most ``dispatcher_idle_look_s``."""
        if self.policy.max_running is not None or self.policy.tenant_max_running is not None:
            return False
        if time.monotonic() - self._flag_raised_at < FLAG_GRACE_S:
            return False
        queued = exists().select_from(AdmissionQueue)
        capped = exists().where(Tenant.max_running.is_not(None))
        return not s.execute(select(queued | capped)).scalar_one()

    def _publish(self, wakeups: list[Wakeup], deferred: str) -> None:
        """Publish ``wakeups`` after their commit and mark what went out; the reaper publishes the rest after the
        outbox grace period (``deferred`` names the log line that says so)."""
        published: list[int] = []
        try:
            for w in wakeups:
                self.publisher.wake(w.task_id, w.step_index, w.phase, w.priority)
                published.append(w.outbox_id)
        except Exception as exc:
            log.warning(deferred, error=str(exc))
        finally:
            self.ledger.mark_published(published)

    def _admit(self, s: Session, room: int | None = None) -> tuple[list[Wakeup], int]:
        """Admit up to ``room`` (None: no backlog bound) of the waiting tasks the caps allow. Returns their wake-ups
        and how many admissible tasks (below their tenant's cap) are left waiting."""
        # tasks cancelled while they waited leave the queue
        s.execute(
            delete(AdmissionQueue).where(
                AdmissionQueue.task_id.in_(select(Task.id).where(Task.status.in_(TERMINAL_TASK)))
            )
        )
        now = datetime.now(UTC)
        rows = s.execute(
            select(
                AdmissionQueue.task_id,
                AdmissionQueue.tenant_id,
                AdmissionQueue.enqueued_at,
                func.coalesce(TaskOptions.base_priority, Task.priority),
                Task.deadline,
            )
            .join(Task, Task.id == AdmissionQueue.task_id)
            .outerjoin(TaskOptions, TaskOptions.task_id == AdmissionQueue.task_id)
            .where(Task.status == "queued")  # a paused task waits until it is resumed
            .order_by(AdmissionQueue.enqueued_at)
            .limit(self.batch * 10)
        ).all()
        if not rows:
            return [], 0
        waiting = [
            _Waiting(tid, tenant, at, effective_priority(base, deadline, self.policy, now))
            for tid, tenant, at, base, deadline in rows
        ]
        tenants = {w.tenant_id for w in waiting}
        running: dict[str, int] = dict.fromkeys(tenants, 0)
        running.update(
            s.execute(
                select(Task.tenant_id, func.count())
                .where(
                    Task.tenant_id.in_(tenants),
                    Task.status.not_in(TERMINAL_TASK),
                    ~exists().where(AdmissionQueue.task_id == Task.id),
                )
                .group_by(Task.tenant_id)
            ).all()
        )
        own_caps = {t: cap for t, cap in s.execute(select(Tenant.id, Tenant.max_running).where(Tenant.id.in_(tenants)))}
        # a tenant's own cap, else the default one: an own cap of 0 is a cap (as ``hold_if_capped`` reads it)
        caps = {t: _own_or(own_caps.get(t), self.policy.tenant_max_running) for t in tenants}
        total = s.execute(_running()).scalar_one() if self.policy.max_running is not None else 0

        admitted: list[_Waiting] = []
        while len(admitted) < (self.batch if room is None else min(room, self.batch)):
            if self.policy.max_running is not None and total >= self.policy.max_running:
                break
            open_ = [w for w in waiting if _below(running[w.tenant_id], caps[w.tenant_id])]
            if not open_:
                break
            best = min(open_, key=lambda w: (-w.priority, running[w.tenant_id], w.enqueued_at))
            waiting.remove(best)
            admitted.append(best)
            running[best.tenant_id] += 1
            total += 1
        left = sum(1 for w in waiting if _below(running[w.tenant_id], caps[w.tenant_id]))
        return [self._admit_one(s, w) for w in admitted], left

    @staticmethod
    def _admit_one(s: Session, w: _Waiting) -> Wakeup:
        s.execute(delete(AdmissionQueue).where(AdmissionQueue.task_id == w.task_id))
        s.execute(update(Task).where(Task.id == w.task_id).values(priority=w.priority))
        outbox_id = s.execute(
            insert(Outbox)
            .values(task_id=w.task_id, step_index=0, phase="think", priority=w.priority)
            .on_conflict_do_update(
                constraint="uq_outbox_task_step_phase", set_={"published_at": None, "created_at": func.now()}
            )
            .returning(Outbox.id)
        ).scalar_one()
        emit(s, w.task_id, "task.admitted", priority=w.priority)
        return Wakeup(outbox_id, w.task_id, 0, "think", w.priority)

    def refresh_priorities(self) -> int:
        """Raise ``tasks.priority`` of unfinished tasks whose deadline draws nearer, and publish again, at the new
        priority, their wake-ups already published but not yet taken (RabbitMQ cannot reorder a message in place;
        the copy left behind is a duplicate the ledger settles). Returns how many tasks changed."""
        now = datetime.now(UTC)
        changed = 0
        wakeups: list[Wakeup] = []
        with self.db.transaction() as s:
            rows = s.execute(
                select(Task.id, Task.priority, TaskOptions.base_priority, Task.deadline)
                .join(TaskOptions, TaskOptions.task_id == Task.id)
                .where(Task.deadline.is_not(None), Task.status.not_in(TERMINAL_TASK))
            ).all()
            for task_id, current, base, deadline in rows:
                wanted = effective_priority(base, deadline, self.policy, now)
                if wanted != current:
                    s.execute(update(Task).where(Task.id == task_id).values(priority=wanted))
                    changed += 1
                    if wanted > current:
                        wakeups += reprioritise_wakeups(s, task_id, wanted)
        self._publish(wakeups, "reprioritised_publish_deferred")
        if wakeups:
            log.info("wakeups_reprioritised", count=len(wakeups))
        return changed
