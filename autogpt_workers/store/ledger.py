"""The step ledger: every state change of a run, each in one short PostgreSQL transaction.

Statements run on the session's connection (Core execution): the ORM's bulk-update bookkeeping (synchronising
objects in the session, which this module never reads back) cost more CPU than the rest of a step.

How a step stays durable (see README "How a step is made durable"):

* ``claim`` takes a lease on (task, step, phase) with a fresh token, or says why not (already committed, held by a
  live worker, task finished / paused / cancelling / waiting for approval, past its deadline, delivered too often).
  A delivery for an already committed step flushes the successor's wake-up instead of re-executing.
* ``propose`` persists the LLM's proposal and the act wake-up in one transaction, fenced on the token (or parks the
  step ``awaiting_approval`` in approval mode).
* ``commit_step`` persists the observation, the artifacts and the next step's wake-up in one transaction, fenced
  on the token: a zombie whose lease was taken over commits nothing.
* For a running task, ``claim`` (which also starts a queued one), ``propose`` and ``commit_step`` are each one
  statement that is its own transaction (``phase_sql.run_alone``), the task row locked in it before the step's; for
  any other state they take the general path, a transaction that reads the task's state under its lock first.
* Wake-ups are outbox rows; the caller publishes them after commit and marks them published. The reaper publishes
  rows nobody published, re-drives steps whose lease expired and fails tasks past their deadline.

Lifecycle (``autogpt_workers.lifecycle`` is the user-facing half): wake-ups are only written for tasks that are
``queued`` or ``running``. A ``paused`` task keeps its in-flight phase's result but gets no wake-up (resume re-arms
it); a ``cancelling`` task ends ``cancelled`` at the in-flight phase's next boundary; a cancelled step is never
claimed again, so a cancelled task runs no further step whatever the broker still delivers.

Lock order: every transaction that changes a task and one of its steps locks the task row first
(``FOR NO KEY UPDATE``, which does not block the foreign-key checks of inserts), then the step. The heartbeat
(``renew``) touches steps only. Keeping one order means no deadlock between workers, the reaper and the API.
"""

from __future__ import annotations

import dataclasses
import enum
import uuid
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, bindparam, case, delete, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from autogpt_workers.store import hot_sql as sql
from autogpt_workers.store import phase_sql, submit_sql
from autogpt_workers.store.db import Database, Tx
from autogpt_workers.store.hot_sql import TERMINAL_TASK
from autogpt_workers.store.models import Outbox, Step, Task
from autogpt_workers.store.submit_sql import CreatedTask

OPEN_STEP = ("pending", "thinking", "proposed", "acting", "awaiting_approval")
LEASED_STEP = ("thinking", "acting")  # the only statuses in which a step holds a lease
CLOSED_STEP = ("completed", "failed", "cancelled")
ACTIVE_TASK = ("queued", "running")  # the statuses in which wake-ups are written and steps start


# finished tasks past the retention (``Ledger.prune_finished_tasks``), oldest first, read through ``ix_tasks_finished``;
# their steps, events, artifacts' records, outbox rows, options and webhook deliveries go with them (``ON DELETE
# CASCADE``, each on an index of its task id). A task locked by another transaction is left for the next round
_PRUNE_TASKS = (
    delete(Task)
    .where(
        Task.id.in_(
            select(Task.id)
            .where(Task.status.in_(TERMINAL_TASK), Task.finished_at < bindparam("p_cutoff"))
            .order_by(Task.finished_at)
            .limit(bindparam("p_limit"))
            .with_for_update(skip_locked=True)
        )
    )
    .returning(Task.id)
)

# the outbox's rows that nothing reads any more (``Ledger.prune_outbox``), oldest first, read through the index
# ``ix_outbox_published``: a round reads the rows it deletes and the few old ones it keeps (wake-ups of open steps)
_PRUNE_OUTBOX = delete(Outbox).where(
    Outbox.id.in_(
        select(Outbox.id)
        .join(Step, and_(Step.task_id == Outbox.task_id, Step.step_index == Outbox.step_index))
        .join(Task, Task.id == Outbox.task_id)
        .where(
            Outbox.published_at < bindparam("p_cutoff"),
            or_(Step.status.in_(CLOSED_STEP), Task.status.in_(TERMINAL_TASK)),
        )
        .order_by(Outbox.published_at)
        .limit(bindparam("p_limit"))
        .with_for_update(of=Outbox, skip_locked=True)
        .scalar_subquery()
    )
)


class ClaimOutcome(enum.StrEnum):
    claimed = "claimed"
    committed = "committed"  # step already done: flush its successor's wake-up, ack
    advanced = "advanced"  # think delivery for a step already proposed: flush the act wake-up, ack
    not_ready = "not_ready"  # act delivery for a step not yet proposed: stray, ack
    task_finished = "task_finished"
    lease_held = "lease_held"
    poisoned = "poisoned"
    missing = "missing"
    paused = "paused"  # the task is paused: drop the wake-up, resume re-arms it
    stopping = "stopping"  # a cancel was requested: drop the wake-up (the cancel is finished here if nobody works)
    awaiting_approval = "awaiting_approval"  # the step waits for a human: approve re-arms it
    deadline = "deadline"  # the task passed its deadline: it is now failed


@dataclasses.dataclass(frozen=True)
class HistoryRow:
    """A committed step as the prompt sees it."""

    step_index: int
    proposal: dict[str, Any] | None
    output: str | None
    is_error: bool
    is_last: bool


@dataclasses.dataclass(frozen=True)
class RunTask:
    """A task as a claimed phase sees it (``hot_sql.RUN_TASK_COLUMNS``, in order)."""

    id: uuid.UUID
    goal: str
    budget: dict[str, Any]
    steps_completed: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    started_at: datetime | None
    created_at: datetime
    allowed_commands: list[Any] | None
    approval: Any  # the approval policy as stored (JSONB: "never", "always" or a list of side-effect classes)
    priority: int
    tenant_id: str = ""  # these two never change: the runner keeps them (``task_facts``)
    profile: str | None = None  # its ``task_options.profile``


@dataclasses.dataclass(frozen=True)
class RunStep:
    """The claimed step as the act phase sees it."""

    proposal: dict[str, Any] | None


@dataclasses.dataclass(frozen=True)
class Claim:
    outcome: ClaimOutcome
    token: uuid.UUID | None = None
    retry_in: float = 0.0
    deliveries: int = 0
    reason: str | None = None
    queued_at: datetime | None = None  # when this phase's wake-up was committed (for the queue-wait metric)
    # with a token: the run as claimed, read in the claim's transaction (no second round of reads per phase)
    task: RunTask | None = None
    # think only: committed steps before it (from the claim's ``history_from`` on)
    history: list[HistoryRow] = dataclasses.field(default_factory=list)
    current: RunStep | None = None  # the step itself (act only)


@dataclasses.dataclass(frozen=True)
class Wakeup:
    """An outbox row to publish: "run phase P of step k of task T"."""

    outbox_id: int
    task_id: uuid.UUID
    step_index: int
    phase: str
    priority: int


class ProposeOutcome(enum.StrEnum):
    proposed = "proposed"  # act wake-up written
    awaiting_approval = "awaiting_approval"  # parked until a human approves, edits or answers
    parked = "parked"  # the task is paused: no wake-up until resumed
    cancelled = "cancelled"  # the task was cancelling: the proposal is kept for the record, the task is cancelled
    fenced = "fenced"  # our lease was taken over: nothing written
    acting = "acting"  # the proposer runs the act phase itself, under the same lease: no wake-up


@dataclasses.dataclass(frozen=True)
class Proposed:
    outcome: ProposeOutcome
    wakeup: Wakeup | None = None


@dataclasses.dataclass(frozen=True)
class FileRecord:
    relative_path: str
    size_bytes: int
    sha256: str | None


def _now() -> datetime:
    return datetime.now(UTC)


def _create_params(values: dict[str, Any], options: dict[str, Any] | None) -> dict[str, Any]:
    params = {f"p_{k}": values.get(k, default) for k, default in submit_sql.TASK_DEFAULTS.items()}
    params["p_id"] = uuid.uuid4()
    params["p_event_data"] = {"priority": values.get("priority", 5)}
    if options is not None:
        params.update({f"p_{k}": options[k] for k in submit_sql.OPTION_COLUMNS})
    return params


def _created(row: Any, priority: int) -> CreatedTask | None:
    if row is None:
        return None
    task_id, created_at, outbox_id, tenant_cap = row
    return CreatedTask(task_id, Wakeup(outbox_id, task_id, 0, "think", priority), created_at, tenant_cap)


def add_wakeup(session: Tx, task_id: uuid.UUID, step_index: int, phase: str, priority: int) -> Wakeup:
    """Insert (or re-arm) the outbox row for a wake-up, in the caller's transaction."""
    outbox_id = session.connection().execute(
        sql.ADD_WAKEUP, {"p_task_id": task_id, "p_step_index": step_index, "p_phase": phase, "p_priority": priority}
    ).scalar_one()
    return Wakeup(outbox_id, task_id, step_index, phase, priority)


def _unclaimed() -> Any:
    """An outbox row (joined to its step) whose wake-up no worker took since it was written."""
    return or_(
        and_(
            Outbox.phase == "think",
            Step.status == "pending",
            or_(Step.think_started_at.is_(None), Step.think_started_at < Outbox.created_at),
        ),
        and_(
            Outbox.phase == "act",
            Step.status == "proposed",
            or_(Step.act_started_at.is_(None), Step.act_started_at < Outbox.created_at),
        ),
    )


def reprioritise_wakeups(session: Tx, task_id: uuid.UUID, priority: int) -> list[Wakeup]:
    """In the caller's transaction: give the task's wake-ups not yet taken by a worker the new ``priority``, and
    re-arm those already published, which the caller publishes again (the first copy, when it is delivered, finds
    its step taken or done and is settled as a duplicate by ``Ledger.claim``)."""
    ids = (
        select(Outbox.id)
        .join(Step, and_(Step.task_id == Outbox.task_id, Step.step_index == Outbox.step_index))
        # a step handed back with an error (a long Retry-After, a transient fault) waits out its countdown:
        # publishing it again now would skip that wait; its own wake-up carries the old priority a little longer
        .where(Outbox.task_id == task_id, _unclaimed(), Step.error.is_(None))
        .scalar_subquery()
    )
    rows = session.connection().execute(
        update(Outbox)
        .where(Outbox.id.in_(ids))
        .values(priority=priority, published_at=None, created_at=func.now())
        .returning(Outbox.id, Outbox.task_id, Outbox.step_index, Outbox.phase, Outbox.priority)
    ).all()
    return [Wakeup(*r) for r in rows]


def emit(session: Tx, task_id: uuid.UUID, kind: str, step_index: int | None = None, **data: Any) -> None:
    """Append to the task's event log, in the caller's transaction (so an event exists iff its change does)."""
    session.connection().execute(
        sql.EMIT, {"p_task_id": task_id, "p_kind": kind, "p_step_index": step_index, "p_data": data}
    )


@dataclasses.dataclass(frozen=True)
class TaskState:
    """What a transition needs to know of a task (read under the task row's lock)."""

    status: str
    tenant_id: str
    priority: int
    deadline: datetime | None
    error: str | None
    steps_completed: int
    started_at: datetime | None


_STATE_COLUMNS = len(sql.TASK_STATE_COLUMNS)
_RUN_COLUMNS_END = _STATE_COLUMNS + len(sql.RUN_TASK_COLUMNS)


def _lock_task_phase(s: Tx, task_id: uuid.UUID, prepared: bool) -> TaskState | None:
    """``lock_task`` as a phase statement (prepared, on the DBAPI cursor): a proposal's and a commit's first."""
    row = phase_sql.run(s.connection(), phase_sql.LOCK_TASK, {"p_task_id": task_id}, prepared).one_or_none()
    return None if row is None else TaskState(*row)


def lock_task(session: Tx, task_id: uuid.UUID, *, skip_locked: bool = False) -> TaskState | None:
    """Lock the task row (first, see the module docstring) and return its state; ``None`` if there is no such task
    (or, with ``skip_locked``, if another transaction holds it)."""
    stmt = sql.LOCK_TASK_SKIP_LOCKED if skip_locked else sql.LOCK_TASK
    row = session.connection().execute(stmt, {"p_task_id": task_id}).one_or_none()
    return None if row is None else TaskState(*row)


def cancel_now(session: Tx, task_id: uuid.UUID, reason: str) -> bool:
    """End the task ``cancelled`` in the caller's transaction (task row locked): its open steps are cancelled,
    their leases cleared (a zombie holder is fenced) and its unpublished wake-ups withdrawn."""
    s = session
    open_steps = s.connection().execute(
        update(Step)
        .where(Step.task_id == task_id, Step.status.in_(OPEN_STEP))
        .values(
            status="cancelled",
            error=reason,
            committed_at=func.now(),
            lease_owner=None,
            lease_token=None,
            lease_expires_at=None,
        )
        .returning(Step.step_index)
    ).scalars().all()
    s.connection().execute(delete(Outbox).where(Outbox.task_id == task_id, Outbox.published_at.is_(None)))
    done = s.connection().execute(
        update(Task)
        .where(Task.id == task_id, Task.status.not_in(TERMINAL_TASK))
        .values(status="cancelled", error=reason, finished_at=func.now())
    )
    if not done.rowcount:
        return False
    emit(s, task_id, "task.cancelled", max(open_steps) if open_steps else None, reason=reason)
    return True


def fail_now(session: Tx, task_id: uuid.UUID, step_index: int, reason: str, code: str | None = None) -> bool:
    """End the task ``failed`` with a reason in the caller's transaction; its open steps fail with it."""
    s = session
    s.connection().execute(
        update(Step)
        .where(Step.task_id == task_id, Step.status.in_(OPEN_STEP))
        .values(
            status="failed",
            error=reason,
            committed_at=func.now(),
            lease_owner=None,
            lease_token=None,
            lease_expires_at=None,
        )
    )
    failed = s.connection().execute(
        update(Task)
        .where(Task.id == task_id, Task.status.not_in(TERMINAL_TASK))
        .values(status="failed", error=reason, finished_at=func.now())
    )
    if not failed.rowcount:
        return False
    extra = {"code": code} if code else {}
    emit(s, task_id, "task.failed", step_index, reason=reason, **extra)
    return True


def _read_run(
    session: Tx, task_id: uuid.UUID, step_index: int, *, phase: str, history_from: int = 0
) -> tuple[list[HistoryRow], RunStep | None]:
    """For think the task's committed steps from ``history_from`` to ``step_index`` (the columns the prompt
    needs), for act the step's proposal, as of this transaction."""
    conn = session.connection()
    at = {"p_task_id": task_id, "p_step_index": step_index}
    if phase == "think":
        rows = conn.execute(sql.HISTORY, {**at, "p_history_from": history_from})
        return [HistoryRow(*r) for r in rows], None
    return [], RunStep(conn.execute(sql.STEP_PROPOSAL, at).scalar_one())


def _lease_values(
    task_id: uuid.UUID, step_index: int, phase: str, owner: str, token: uuid.UUID, now: datetime, lease_ttl_s: float,
    history_from: int,
) -> dict[str, Any]:
    """The parameters of a claim's write (``phase_sql.CLAIM_WRITE``; ``CLAIM_ALONE`` adds the delivery budget)."""
    return {
        "p_task_id": task_id,
        "p_step_index": step_index,
        "p_status": "thinking" if phase == "think" else "acting",
        "p_owner": owner,
        "p_token": token,
        "p_expires": now + timedelta(seconds=lease_ttl_s),
        "p_now": now,
        "p_phase": phase,
        **({"p_history_from": history_from} if phase == "think" else {}),
    }


def _run_of(phase: str, rows: list[Any]) -> tuple[list[HistoryRow], RunStep | None]:
    """A claim's run from its rows of (step_index, proposal, output, is_error, is_last): for think the history
    (a row of NULLs when there is none), for act the step's proposal."""
    if phase == "think":
        return [HistoryRow(*r) for r in rows if r[0] is not None], None
    return [], RunStep(rows[0][1])


def _proposal_values(task_id: uuid.UUID, step_index: int, token: uuid.UUID, proposal: dict[str, Any]) -> dict[str, Any]:
    """The parameters of a proposal's statements (``phase_sql.PROPOSE_*``), its event's data among them."""
    usage = proposal.get("usage") or {}
    prompt_tokens = int(usage.get("prompt_tokens", 0))
    completion_tokens = int(usage.get("completion_tokens", 0))
    cost = float(proposal.get("cost_usd", 0.0))
    return {
        "p_task_id": task_id,
        "p_step_index": step_index,
        "p_token": token,
        "p_proposal": proposal,
        "p_command": proposal.get("command"),
        "p_arguments": proposal.get("arguments"),
        "p_model": proposal.get("model"),
        "p_prompt_tokens": prompt_tokens,
        "p_completion_tokens": completion_tokens,
        "p_cost": cost,
        "p_event_data": {
            "command": proposal.get("command"),
            "arguments": proposal.get("arguments"),
            "thought": _clip((proposal.get("assistant_message") or {}).get("content")),
            "error": _clip(proposal.get("error")),
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "cost_usd": cost,
        },
    }


def _commit_values(
    task_id: uuid.UUID, step_index: int, token: uuid.UUID, output: str, is_error: bool, files: list[FileRecord]
) -> dict[str, Any]:
    """The parameters of ``phase_sql.COMMIT_NEXT`` (and its ``_ALONE`` variant), but the priority."""
    return {
        "p_task_id": task_id,
        "p_step_index": step_index,
        "p_token": token,
        "p_output": output,
        "p_is_error": is_error,
        "p_event_data": {"output": _clip(output), "is_error": is_error, "is_last": False},
        "p_paths": [f.relative_path for f in files],
        "p_sizes": [f.size_bytes for f in files],
        "p_shas": [f.sha256 for f in files],
    }


def deadline_reason(deadline: datetime, where: str) -> str:
    return f"deadline: the task passed its deadline ({deadline.isoformat()}) {where}"


def _clip(text: str | None, limit: int = 500) -> str | None:
    return text if text is None or len(text) <= limit else text[: limit - 1] + "…"


class Ledger:
    def __init__(self, db: Database) -> None:
        self.db = db

    # -- submission ------------------------------------------------------------------------------------------------

    def create_task(
        self, session: Session, values: dict[str, Any], *, options: dict[str, Any] | None = None
    ) -> CreatedTask | None:
        """Insert a task, its first step and its first wake-up (and, given ``options``, its ``task_options`` row)
        in one statement. ``None`` if the idempotency key is taken. ``options`` holds every column of
        ``submit_sql.OPTION_COLUMNS`` and no webhook (the caller records a webhook's options itself)."""
        priority = values.get("priority", 5)
        if not values.keys() <= submit_sql.TASK_DEFAULTS.keys():  # a column the prebuilt statement does not set
            stmt_any = insert(Task).values(**values)
            if values.get("idempotency_key") is not None:
                stmt_any = stmt_any.on_conflict_do_nothing(constraint="uq_tasks_tenant_idempotency_key")
            new_id = session.connection().execute(stmt_any.returning(Task.id)).scalar_one_or_none()
            if new_id is None:
                return None
            session.connection().execute(insert(Step).values(task_id=new_id, step_index=0))
            emit(session, new_id, "task.queued", priority=priority)
            return CreatedTask(new_id, add_wakeup(session, new_id, 0, "think", priority), None, None)
        stmt = submit_sql.CREATE_TASK if options is None else submit_sql.CREATE_TASK_WITH_OPTIONS
        return _created(session.connection().execute(stmt, _create_params(values, options)).one_or_none(), priority)

    def create_task_alone(self, values: dict[str, Any], *, options: dict[str, Any] | None = None) -> CreatedTask | None:
        """``create_task`` as a transaction of its own, in one round trip (autocommit), for a tenant without a
        running-task cap of its own. ``None``: nothing was written (the tenant has a cap, or the idempotency key is
        taken), and the caller takes ``create_task`` in a transaction, which decides both."""
        if not values.keys() <= submit_sql.TASK_DEFAULTS.keys():
            return None
        stmt = submit_sql.CREATE_TASK_ALONE if options is None else submit_sql.CREATE_TASK_ALONE_WITH_OPTIONS
        params = _create_params(values, options)
        with self.db.autocommit() as connection:  # by name on the API's engine (``SUBMIT_STATEMENTS`` prepared)
            row = phase_sql.run(connection, stmt, params, self.db.prepared_submit).one_or_none()
        return _created(row, values.get("priority", 5))

    def create_tasks_alone(
        self, submits: Sequence[tuple[dict[str, Any], dict[str, Any]]]
    ) -> list[CreatedTask | None]:
        """``create_task_alone`` (with options) for several submits in one statement and one round trip (the API's
        group commit, ``submit.submit_task``): one result per ``(values, options)``, in order, each what
        ``create_task_alone`` would answer for it alone (``None``: nothing written for it, take the transaction).
        They go in sorted by tenant and idempotency key (see ``submit_sql.CREATE_TASKS_ALONE``). A statement the
        server refuses writes nothing for any of them."""
        if any(not values.keys() <= submit_sql.TASK_DEFAULTS.keys() for values, _ in submits):
            return [None] * len(submits)
        params = [_create_params(values, options) for values, options in submits]
        ordered = sorted(params, key=lambda p: (p["p_tenant_id"], p["p_idempotency_key"] or ""))
        rows = {"p_rows": submit_sql.batch_rows(ordered)}
        with self.db.autocommit() as connection:
            found = phase_sql.run(connection, submit_sql.CREATE_TASKS_ALONE, rows, self.db.prepared_submit).all()
        made = {str(task_id): (created_at, outbox_id) for task_id, created_at, outbox_id in found}
        results: list[CreatedTask | None] = []
        for p in params:
            hit = made.get(str(p["p_id"]))
            results.append(None if hit is None else _created((p["p_id"], *hit, None), p["p_priority"]))
        return results

    # -- the step protocol -----------------------------------------------------------------------------------------

    def claim(
        self,
        task_id: uuid.UUID,
        step_index: int,
        phase: str,
        owner: str,
        lease_ttl_s: float,
        max_deliveries: int,
        history_from: int = 0,
    ) -> Claim:
        """Take the lease on (task, step, phase), or say why not. Claimed, the run comes with it: the task, for
        think the committed steps from ``history_from`` on (a caller that keeps the earlier ones skips them), for
        act the step's proposal."""
        claimed = self._claim_alone(task_id, step_index, phase, owner, lease_ttl_s, max_deliveries, history_from)
        if claimed is not None:
            return claimed
        with self.db.core_transaction() as s:
            at = {"p_task_id": task_id, "p_step_index": step_index}
            prepared = self.db.prepared_statements
            locked = phase_sql.run(s.connection(), phase_sql.CLAIM_READ, at, prepared).one_or_none()
            if locked is None or locked[_RUN_COLUMNS_END] is None:  # no such task, or no such step
                return Claim(ClaimOutcome.missing)
            task = TaskState(*locked[:_STATE_COLUMNS])
            step_status, token, expires, deliveries, think_deliveries, profile = locked[_RUN_COLUMNS_END:]
            run = RunTask(*(*locked[_STATE_COLUMNS:_RUN_COLUMNS_END], task.tenant_id, profile))
            if step_status in ("completed", "failed"):
                return Claim(ClaimOutcome.committed)
            if task.status in TERMINAL_TASK or step_status == "cancelled":
                return Claim(ClaimOutcome.task_finished, reason=task.status)
            now = _now()
            live = token is not None and expires is not None and expires > now
            if task.status == "cancelling":
                if not live:  # nobody is working on it any more: the cancel completes here
                    cancel_now(s, task_id, task.error or "cancelled on request")
                return Claim(ClaimOutcome.stopping)
            if task.status == "paused":
                return Claim(ClaimOutcome.paused)
            if step_status == "awaiting_approval":
                return Claim(ClaimOutcome.awaiting_approval)
            if phase == "think" and step_status in ("proposed", "acting"):
                return Claim(ClaimOutcome.advanced)
            if phase == "act" and step_status in ("pending", "thinking"):
                return Claim(ClaimOutcome.not_ready)
            if live:
                assert expires is not None
                return Claim(ClaimOutcome.lease_held, retry_in=(expires - now).total_seconds() + 0.2)
            if task.deadline is not None and task.deadline <= now:
                reason = deadline_reason(task.deadline, f"before step {step_index} ({phase})")
                fail_now(s, task_id, step_index, reason, code="deadline")
                return Claim(ClaimOutcome.deadline, reason=reason)
            # the budget is per phase: a persisted proposal is progress, its act phase starts afresh
            spent = deliveries - (think_deliveries or 0) if phase == "act" else deliveries
            if spent >= max_deliveries:
                reason = (
                    f"step {step_index} poisoned: {spent} deliveries of its {phase} phase without a commit "
                    f"(limit {max_deliveries})"
                )
                fail_now(s, task_id, step_index, reason, code="poisoned")
                return Claim(ClaimOutcome.poisoned, deliveries=spent, reason=reason)
            new_token = uuid.uuid4()
            if task.status == "queued":
                s.connection().execute(sql.START_TASK, {"p_task_id": task_id})
                emit(s, task_id, "task.started", step_index)
                run = dataclasses.replace(run, started_at=run.started_at or now)
            # the lease, the wake-up marked published (receiving it proves it was) and the run, in one statement
            rows = phase_sql.run(
                s.connection(),
                phase_sql.CLAIM_WRITE[phase],
                _lease_values(task_id, step_index, phase, owner, new_token, now, lease_ttl_s, history_from),
                prepared,
            ).all()
            history, current = _run_of(phase, [r[1:] for r in rows])
            return Claim(
                ClaimOutcome.claimed, token=new_token, deliveries=spent + 1, queued_at=rows[0][0],
                task=run, history=history, current=current,
            )  # fmt: skip

    def _claim_alone(
        self,
        task_id: uuid.UUID,
        step_index: int,
        phase: str,
        owner: str,
        lease_ttl_s: float,
        max_deliveries: int,
        history_from: int,
    ) -> Claim | None:
        """The common claim (a running task's step ready for the phase, free, under its budget and deadline) in one
        statement that is its own transaction (``phase_sql.CLAIM_ALONE``); ``None`` if it did not apply (nothing was
        written): the caller takes the general path, which reads the state under the locks and says why."""
        now = _now()
        token = uuid.uuid4()
        values = _lease_values(task_id, step_index, phase, owner, token, now, lease_ttl_s, history_from)
        rows = phase_sql.run_alone(
            self.db, phase_sql.CLAIM_ALONE[phase], {**values, "p_max_deliveries": max_deliveries}
        ).all()
        if not rows:
            return None
        first = rows[0]
        run = RunTask(*(*first[_STATE_COLUMNS:_RUN_COLUMNS_END], first[1], first[_RUN_COLUMNS_END]))
        if first[0] == "queued":  # started by this claim
            run = dataclasses.replace(run, started_at=run.started_at or now)
        spent, queued_at = first[_RUN_COLUMNS_END + 1], first[_RUN_COLUMNS_END + 2]
        history, current = _run_of(phase, [r[_RUN_COLUMNS_END + 3 :] for r in rows])
        return Claim(
            ClaimOutcome.claimed, token=token, deliveries=spent, queued_at=queued_at,
            task=run, history=history, current=current,
        )  # fmt: skip

    def history(self, task_id: uuid.UUID, before: int) -> list[HistoryRow]:
        """The task's committed steps before step ``before``."""
        with self.db.session() as s:
            history, _ = _read_run(s, task_id, before, phase="think")
            return history

    def renew(self, tokens: Sequence[uuid.UUID], lease_ttl_s: float) -> dict[uuid.UUID, str]:
        """Heartbeat: extend every lease this process still holds.

        Returns ``{token: task status}`` for the leases extended: a token missing was taken over (fenced), and a
        status such as ``cancelling`` tells the holder to stop at its next safe point.
        """
        if not tokens:
            return {}
        with self.db.transaction() as s:
            rows = s.connection().execute(
                update(Step)
                # a leased step is thinking or acting (every other status clears the lease): the status lets
                # PostgreSQL find the tokens among the open steps (``ix_steps_lease_open``) instead of scanning
                # every step ever run: 31 ms per heartbeat at 300k steps, 107 ms at 1M (``bench.history_micro``)
                .where(Step.lease_token.in_(list(tokens)), Step.status.in_(LEASED_STEP))
                .values(lease_expires_at=_now() + timedelta(seconds=lease_ttl_s))
                .returning(
                    Step.lease_token,
                    select(Task.status).where(Task.id == Step.task_id).scalar_subquery(),
                )
            ).all()
            return {token: status for token, status in rows}

    def held_step(self, token: uuid.UUID) -> tuple[uuid.UUID, int] | None:
        """The ``(task_id, step_index)`` of the step lease ``token`` holds; None if it holds none any more."""
        with self.db.session() as s:
            row = s.connection().execute(
                select(Step.task_id, Step.step_index).where(Step.lease_token == token, Step.status.in_(LEASED_STEP))
            ).one_or_none()
        return None if row is None else (row[0], row[1])

    def propose(
        self,
        task_id: uuid.UUID,
        step_index: int,
        token: uuid.UUID,
        proposal: dict[str, Any],
        *,
        await_approval: bool = False,
        act_lease_ttl_s: float | None = None,
    ) -> Proposed:
        """Persist the model's proposal and, depending on the task's state, the act wake-up (see ``ProposeOutcome``).

        With ``act_lease_ttl_s``, a proposal that would get an act wake-up instead moves the step straight to
        ``acting`` under the caller's lease, renewed for that long (``ProposeOutcome.acting``): the caller runs the
        command itself. Its lease is the step's safety net, as for an act-queue claim: if the caller dies, the reaper
        re-arms the act phase when the lease expires.

        The tokens it cost are counted whatever the outcome (they were spent), unless we were fenced.
        """
        if not (await_approval and proposal.get("error") is None):
            proposed = self._propose_alone(task_id, step_index, token, proposal, act_lease_ttl_s)
            if proposed is not None:
                return proposed
        with self.db.core_transaction() as s:
            return self._propose(s, task_id, step_index, token, proposal, await_approval, act_lease_ttl_s)

    def _propose_alone(
        self,
        task_id: uuid.UUID,
        step_index: int,
        token: uuid.UUID,
        proposal: dict[str, Any],
        act_lease_ttl_s: float | None,
    ) -> Proposed | None:
        """The common case (the task running, no approval to wait for) in one statement that is its own transaction
        (``phase_sql.run_alone``). ``None`` if the task was not running: nothing was written, and the caller takes
        the general path, which reads the task's state under its lock and does what that state asks."""
        acting = act_lease_ttl_s is not None
        values = _proposal_values(task_id, step_index, token, proposal)
        if act_lease_ttl_s is not None:
            values["p_expires"] = _now() + timedelta(seconds=act_lease_ttl_s)
        statement = phase_sql.PROPOSE_ACTING_ALONE if acting else phase_sql.PROPOSE_WAKE_ALONE
        step_id, outbox_id, task_status, priority = phase_sql.run_alone(self.db, statement, values).one()
        if task_status not in ACTIVE_TASK:  # not running, or no such task
            return None
        if step_id is None:
            return Proposed(ProposeOutcome.fenced)
        if acting:
            return Proposed(ProposeOutcome.acting)
        return Proposed(ProposeOutcome.proposed, Wakeup(outbox_id, task_id, step_index, "act", priority))

    def propose_and_commit(
        self,
        task_id: uuid.UUID,
        step_index: int,
        token: uuid.UUID,
        proposal: dict[str, Any],
        output: str,
        is_error: bool,
        is_last: bool,
        act_lease_ttl_s: float,
    ) -> tuple[Proposed, Wakeup | None]:
        """``propose`` (taking the act phase on) and ``commit_step`` in one transaction, for a command with no effect
        outside the ledger that the caller ran before anything was written (``Command.pure``). Returns the proposal's
        outcome and, when it is ``acting`` (the step is committed), the successor's wake-up; any other outcome
        (fenced, cancelled, parked) is what ``propose`` alone would have done, and the command's output is dropped."""
        with self.db.core_transaction() as s:
            proposed = self._propose(s, task_id, step_index, token, proposal, False, act_lease_ttl_s)
            if proposed.outcome is not ProposeOutcome.acting:
                return proposed, None
            committed, wakeup = self._commit(s, task_id, step_index, token, output, is_error, is_last, [])
            if not committed:  # cannot happen: the proposal above holds the task's lock and matched our lease
                raise RuntimeError(f"step {step_index} of task {task_id} proposed but not committed")
            return proposed, wakeup

    def _propose(
        self,
        s: Tx,
        task_id: uuid.UUID,
        step_index: int,
        token: uuid.UUID,
        proposal: dict[str, Any],
        await_approval: bool,
        act_lease_ttl_s: float | None,
    ) -> Proposed:
        values = _proposal_values(task_id, step_index, token, proposal)
        spent = {k: values[k] for k in ("p_prompt_tokens", "p_completion_tokens", "p_cost")}
        task = _lock_task_phase(s, task_id, self.db.prepared_statements)
        if task is None:
            return Proposed(ProposeOutcome.fenced)
        if task.status == "cancelling":
            status = "cancelled"
        elif await_approval and proposal.get("error") is None:
            status = "awaiting_approval"
        else:
            status = "proposed"
        acting = act_lease_ttl_s is not None and status == "proposed" and task.status in ACTIVE_TASK
        lease = {"p_expires": _now() + timedelta(seconds=act_lease_ttl_s)} if acting and act_lease_ttl_s else {}
        if status == "proposed" and task.status in ACTIVE_TASK:  # the common case: one statement
            step_id, outbox_id = phase_sql.run(
                s.connection(),
                phase_sql.PROPOSE_ACTING if acting else phase_sql.PROPOSE_WAKE,
                {**values, **lease, **({} if acting else {"p_priority": task.priority})},
                self.db.prepared_statements,
            ).one()
            if step_id is None:
                return Proposed(ProposeOutcome.fenced)
            if acting:
                return Proposed(ProposeOutcome.acting)
            return Proposed(ProposeOutcome.proposed, Wakeup(outbox_id, task_id, step_index, "act", task.priority))
        updated = s.connection().execute(
            sql.PROPOSE_STEP_ACTING if acting else sql.PROPOSE_STEP,
            {
                **lease,
                "p_task_id": task_id,
                "p_step_index": step_index,
                "p_token": token,
                "p_status": status,
                "p_proposal": proposal,
                "p_command": proposal.get("command"),
                "p_arguments": proposal.get("arguments"),
                "p_model": proposal.get("model"),
                **spent,
            },
        ).scalar_one_or_none()
        if updated is None:
            return Proposed(ProposeOutcome.fenced)
        s.connection().execute(sql.PROPOSE_TASK, {"p_task_id": task_id, **spent})
        emit(s, task_id, "step.proposed", step_index, **values["p_event_data"])
        if status == "cancelled":
            cancel_now(s, task_id, task.error or "cancelled on request")
            return Proposed(ProposeOutcome.cancelled)
        if status == "awaiting_approval":
            emit(
                s, task_id, "step.awaiting_approval", step_index,
                command=proposal.get("command"), arguments=proposal.get("arguments"),
            )
            if task.status in ACTIVE_TASK:
                s.connection().execute(update(Task).where(Task.id == task_id).values(status="awaiting_approval"))
            return Proposed(ProposeOutcome.awaiting_approval)
        if task.status not in ACTIVE_TASK:  # paused (or finished meanwhile): resume re-arms the act phase
            return Proposed(ProposeOutcome.parked)
        if acting:
            return Proposed(ProposeOutcome.acting)
        return Proposed(ProposeOutcome.proposed, add_wakeup(s, task_id, step_index, "act", task.priority))

    def record_proposal(
        self, task_id: uuid.UUID, step_index: int, token: uuid.UUID, proposal: dict[str, Any]
    ) -> Wakeup | None:
        """``propose`` without approval: the act wake-up, or ``None`` (fenced, paused or cancelled)."""
        return self.propose(task_id, step_index, token, proposal).wakeup

    def commit_step(
        self,
        task_id: uuid.UUID,
        step_index: int,
        token: uuid.UUID,
        output: str,
        is_error: bool,
        is_last: bool,
        files: Iterable[FileRecord] = (),
    ) -> tuple[bool, Wakeup | None]:
        """Commit a step's outcome, its artifacts and its successor's wake-up in one transaction.

        Returns (committed, wakeup). ``committed`` is False when our lease was taken over (fenced). The wake-up is
        ``None`` for the last step and when the task is paused (resume re-arms it) or was cancelling (the command
        ran, so its step is committed; then the task is cancelled and no further step starts).
        """
        files = list(files)
        if not is_last:  # the common case, in one statement that is its own transaction
            values = _commit_values(task_id, step_index, token, output, is_error, files)
            step_id, outbox_id, task_status, priority = phase_sql.run_alone(
                self.db, phase_sql.COMMIT_NEXT_ALONE, values
            ).one()
            if task_status in ACTIVE_TASK:
                if step_id is None:
                    return False, None
                return True, Wakeup(outbox_id, task_id, step_index + 1, "think", priority)
            # not running (paused, cancelling; or no such task): nothing was written; the general path below
        with self.db.core_transaction() as s:
            return self._commit(s, task_id, step_index, token, output, is_error, is_last, files)

    def _commit(
        self,
        s: Tx,
        task_id: uuid.UUID,
        step_index: int,
        token: uuid.UUID,
        output: str,
        is_error: bool,
        is_last: bool,
        files: list[FileRecord],
    ) -> tuple[bool, Wakeup | None]:
        task = _lock_task_phase(s, task_id, self.db.prepared_statements)
        if task is None:
            return False, None
        if not is_last and task.status in ACTIVE_TASK:  # the common case: one statement
            step_id, outbox_id = phase_sql.run(
                s.connection(),
                phase_sql.COMMIT_NEXT,
                {**_commit_values(task_id, step_index, token, output, is_error, files), "p_priority": task.priority},
                self.db.prepared_statements,
            ).one()
            if step_id is None:
                return False, None
            return True, Wakeup(outbox_id, task_id, step_index + 1, "think", task.priority)
        updated = s.connection().execute(
            sql.COMMIT_STEP,
            {
                "p_task_id": task_id,
                "p_step_index": step_index,
                "p_token": token,
                "p_output": output,
                "p_is_error": is_error,
                "p_is_last": is_last,
            },
        ).scalar_one_or_none()
        if updated is None:
            return False, None
        task_status = s.connection().execute(
            sql.COMMIT_LAST_TASK if is_last else sql.COMMIT_TASK, {"p_task_id": task_id}
        ).scalar_one()
        emit(s, task_id, "step.completed", step_index, output=_clip(output), is_error=is_error, is_last=is_last)
        for f in files:
            emit(s, task_id, "artifact.written", step_index, relative_path=f.relative_path, size_bytes=f.size_bytes)
            s.connection().execute(
                sql.UPSERT_ARTIFACT,
                {
                    "p_task_id": task_id,
                    "p_step_index": step_index,
                    "p_relative_path": f.relative_path,
                    "p_size_bytes": f.size_bytes,
                    "p_sha256": f.sha256,
                },
            )
        if is_last and task_status == "completed":
            emit(s, task_id, "task.completed", step_index)
        if is_last or task_status in TERMINAL_TASK:
            return True, None
        if task_status == "cancelling":
            cancel_now(s, task_id, task.error or "cancelled on request")
            return True, None
        s.connection().execute(sql.NEXT_STEP, {"p_task_id": task_id, "p_step_index": step_index + 1})
        if task_status not in ACTIVE_TASK:  # paused: resume re-arms the next step
            return True, None
        return True, add_wakeup(s, task_id, step_index + 1, "think", task.priority)

    def fail_task(self, task_id: uuid.UUID, step_index: int, token: uuid.UUID | None, reason: str) -> bool:
        """End the task ``failed`` with a reason, from the worker holding the step's lease."""
        with self.db.transaction() as s:
            lock_task(s, task_id)
            if token is not None:
                held = s.connection().execute(
                    select(Step.id)
                    .where(Step.task_id == task_id, Step.step_index == step_index, Step.lease_token == token)
                    .with_for_update()
                ).scalar_one_or_none()
                if held is None:
                    return False
            return fail_now(s, task_id, step_index, reason)

    def cancel_in_flight(self, task_id: uuid.UUID, step_index: int, token: uuid.UUID) -> bool:
        """The holder of a step stopped it at a safe point because a cancel was requested: the task is cancelled.

        False if our lease was taken over meanwhile (whoever holds it now finishes the cancel).
        """
        with self.db.transaction() as s:
            task = lock_task(s, task_id)
            held = s.connection().execute(
                select(Step.id)
                .where(Step.task_id == task_id, Step.step_index == step_index, Step.lease_token == token)
                .with_for_update()
            ).scalar_one_or_none()
            if task is None or held is None:
                return False
            return cancel_now(s, task_id, task.error or "cancelled on request")

    def release(
        self, task_id: uuid.UUID, step_index: int, token: uuid.UUID, error: str | None, *, refund: bool = False
    ) -> Wakeup | None:
        """Hand a step back (transient failure, shutdown) and re-arm its wake-up; ``None`` if not ours, or if no
        wake-up is due (the task is paused, or was cancelling and is now cancelled). ``refund``: this delivery
        does not count towards ``max_deliveries`` (the server told us to come back later; nothing failed)."""
        with self.db.transaction() as s:
            task = lock_task(s, task_id)
            row = s.connection().execute(
                update(Step)
                .where(Step.task_id == task_id, Step.step_index == step_index, Step.lease_token == token)
                .values(
                    status=case((Step.status == "thinking", "pending"), else_="proposed"),
                    lease_owner=None,
                    lease_token=None,
                    lease_expires_at=None,
                    error=error,
                    deliveries=func.greatest(Step.deliveries - 1, 0) if refund else Step.deliveries,
                )
                .returning(Step.status)
            ).scalar_one_or_none()
            if row is None or task is None:
                return None
            if task.status == "cancelling":
                cancel_now(s, task_id, task.error or "cancelled on request")
                return None
            if task.status not in ACTIVE_TASK:
                return None
            return add_wakeup(s, task_id, step_index, "think" if row == "pending" else "act", task.priority)

    # -- the outbox ------------------------------------------------------------------------------------------------

    def pending_wakeups(self, task_id: uuid.UUID) -> list[Wakeup]:
        with self.db.session() as s:
            rows = s.connection().execute(
                select(Outbox.id, Outbox.task_id, Outbox.step_index, Outbox.phase, Outbox.priority).where(
                    Outbox.task_id == task_id, Outbox.published_at.is_(None)
                )
            ).all()
        return [Wakeup(*r) for r in rows]

    def prune_outbox(self, older_than_s: float, limit: int = 10_000) -> int:
        """Delete up to ``limit`` wake-ups published more than ``older_than_s`` ago whose step is closed or whose task
        has finished, oldest first; how many. Nothing reads them any more: a late delivery of one finds its step
        closed (the claim marks no row, and the successor's wake-up is looked up among the unpublished rows), and
        the reaper's re-drive, the stuck-task detector and admission look only at the wake-ups of open steps."""
        with self.db.autocommit() as connection:
            return connection.execute(
                _PRUNE_OUTBOX, {"p_cutoff": _now() - timedelta(seconds=older_than_s), "p_limit": limit}
            ).rowcount

    def prune_finished_tasks(self, older_than_s: float, limit: int = 100) -> list[uuid.UUID]:
        """Delete up to ``limit`` tasks that finished more than ``older_than_s`` ago, oldest first, with everything of
        theirs in the database; their ids (their stored files are the caller's to delete). A finished task takes no
        more steps: no worker or wake-up writes to it any more (a late delivery finds no task and is dropped)."""
        with self.db.transaction() as s:
            return list(
                s.connection().scalars(
                    _PRUNE_TASKS, {"p_cutoff": _now() - timedelta(seconds=older_than_s), "p_limit": limit}
                )
            )

    def mark_published(self, outbox_ids: Sequence[int]) -> None:
        if not outbox_ids:
            return
        with self.db.transaction() as s:
            s.connection().execute(sql.MARK_PUBLISHED, {"p_ids": list(outbox_ids)})

    # -- the reaper ------------------------------------------------------------------------------------------------

    def reap_expired_leases(self, limit: int = 500) -> list[Wakeup]:
        """Break leases that expired (their worker died or stalled) and re-arm their wake-ups.

        One short transaction per step, task row first (rows another transaction holds are left for next round).
        A cancelling task whose holder died is cancelled now; a paused one gets no wake-up.
        """
        with self.db.session() as s:
            candidates = s.connection().execute(
                select(Step.task_id, Step.step_index)
                .where(Step.status.in_(LEASED_STEP), Step.lease_expires_at < _now())
                .limit(limit)
            ).all()
        wakeups: list[Wakeup] = []
        for task_id, step_index in candidates:
            w = self._reap_one(task_id, step_index)
            if w is not None:
                wakeups.append(w)
        return wakeups

    def _reap_one(self, task_id: uuid.UUID, step_index: int) -> Wakeup | None:
        with self.db.transaction() as s:
            task = lock_task(s, task_id, skip_locked=True)
            if task is None:
                return None
            row = s.connection().execute(
                select(Step.id, Step.status, Step.lease_owner)
                .where(
                    Step.task_id == task_id,
                    Step.step_index == step_index,
                    Step.status.in_(LEASED_STEP),
                    Step.lease_expires_at < _now(),
                )
                .with_for_update(skip_locked=True)
            ).one_or_none()
            if row is None:
                return None
            step_id, status, owner = row
            if task.status == "cancelling":
                cancel_now(s, task_id, task.error or "cancelled on request")
                return None
            s.connection().execute(
                update(Step)
                .where(Step.id == step_id)
                .values(
                    status="pending" if status == "thinking" else "proposed",
                    lease_owner=None,
                    lease_token=None,
                    lease_expires_at=None,
                    error=f"lease of {owner} expired during {status}",
                )
            )
            if task.status not in ACTIVE_TASK:
                return None
            return add_wakeup(s, task_id, step_index, "think" if status == "thinking" else "act", task.priority)

    def expire_deadlines(self, limit: int = 500) -> list[uuid.UUID]:
        """Fail unfinished tasks past their deadline that no worker is on (paused, waiting for approval, waiting
        in a queue). A task whose step holds a live lease fails at that step's next boundary instead."""
        now = _now()
        with self.db.session() as s:
            candidates = s.connection().scalars(
                select(Task.id)
                .where(Task.deadline.is_not(None), Task.deadline <= now, Task.status.not_in(TERMINAL_TASK))
                .limit(limit)
            ).all()
        failed: list[uuid.UUID] = []
        for task_id in candidates:
            with self.db.transaction() as s:
                task = lock_task(s, task_id, skip_locked=True)
                if task is None or task.status in TERMINAL_TASK or task.deadline is None:
                    continue
                open_step = s.connection().execute(
                    select(Step.step_index, Step.lease_expires_at)
                    .where(Step.task_id == task_id, Step.status.in_(OPEN_STEP))
                    .order_by(Step.step_index.desc())
                    .limit(1)
                ).one_or_none()
                if open_step is not None and open_step[1] is not None and open_step[1] > now:
                    continue  # a worker is on it: it fails at the step's next boundary
                index = open_step[0] if open_step is not None else task.steps_completed
                where = "while it was " + task.status.replace("_", " ")
                if fail_now(s, task_id, index, deadline_reason(task.deadline, where), code="deadline"):
                    failed.append(task_id)
        return failed

    def rearm_orphans(self, older_than_s: float, limit: int = 500) -> list[Wakeup]:
        """Wake-ups published ``older_than_s`` ago whose step was not claimed since (the message was dead-lettered
        by an unexpected error, or lost): re-arm them for publishing. A duplicate is harmless; the threshold keeps
        a long queue backlog from being published twice."""
        cutoff = _now() - timedelta(seconds=older_than_s)
        unclaimed = _unclaimed()
        with self.db.transaction() as s:
            ids = (
                select(Outbox.id)
                .join(Step, and_(Step.task_id == Outbox.task_id, Step.step_index == Outbox.step_index))
                .join(Task, Task.id == Outbox.task_id)
                .where(Outbox.published_at < cutoff, Task.status.in_(ACTIVE_TASK), unclaimed)
                .limit(limit)
                .with_for_update(of=Outbox, skip_locked=True)
            )
            rows = s.connection().execute(
                update(Outbox)
                .where(Outbox.id.in_(ids.scalar_subquery()))
                .values(published_at=None, created_at=func.now())
                .returning(Outbox.id, Outbox.task_id, Outbox.step_index, Outbox.phase, Outbox.priority)
            ).all()
        return [Wakeup(*r) for r in rows]

    def due_wakeups(self, older_than_s: float, limit: int = 500) -> list[Wakeup]:
        """Outbox rows nobody published within the grace period (a publisher died or the broker was down)."""
        with self.db.session() as s:
            rows = s.connection().execute(
                select(Outbox.id, Outbox.task_id, Outbox.step_index, Outbox.phase, Outbox.priority)
                .join(Task, Task.id == Outbox.task_id)
                .where(
                    Outbox.published_at.is_(None),
                    Outbox.created_at < _now() - timedelta(seconds=older_than_s),
                    Task.status.in_(ACTIVE_TASK),
                )
                .order_by(Outbox.created_at)
                .limit(limit)
            ).all()
        return [Wakeup(*r) for r in rows]
