"""The step ledger: every state change of a run, each in one short PostgreSQL transaction.

How a step stays durable (see README "How a step is made durable"):

* ``claim`` takes a lease on (task, step, phase) with a fresh token, or says why not (already committed, held by a
  live worker, task finished, delivered too often). A delivery for an already committed step flushes the
  successor's wake-up instead of re-executing.
* ``record_proposal`` persists the LLM's proposal and the act wake-up in one transaction, fenced on the token.
* ``commit_step`` persists the observation, the artifacts and the next step's wake-up in one transaction, fenced
  on the token: a zombie whose lease was taken over commits nothing.
* Wake-ups are outbox rows; the caller publishes them after commit and marks them published. The reaper publishes
  rows nobody published and re-drives steps whose lease expired.
"""

from __future__ import annotations

import dataclasses
import enum
import uuid
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import case, func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from autogpt_workers.store.db import Database
from autogpt_workers.store.models import Artifact, Outbox, Step, Task, TaskEvent

OPEN_STEP = ("pending", "thinking", "proposed", "acting")
TERMINAL_TASK = ("completed", "failed", "cancelled")


class ClaimOutcome(enum.StrEnum):
    claimed = "claimed"
    committed = "committed"  # step already done: flush its successor's wake-up, ack
    advanced = "advanced"  # think delivery for a step already proposed: flush the act wake-up, ack
    not_ready = "not_ready"  # act delivery for a step not yet proposed: stray, ack
    task_finished = "task_finished"
    lease_held = "lease_held"
    poisoned = "poisoned"
    missing = "missing"


@dataclasses.dataclass(frozen=True)
class Claim:
    outcome: ClaimOutcome
    token: uuid.UUID | None = None
    retry_in: float = 0.0
    deliveries: int = 0
    reason: str | None = None
    queued_at: datetime | None = None  # when this phase's wake-up was committed (for the queue-wait metric)


@dataclasses.dataclass(frozen=True)
class Wakeup:
    """An outbox row to publish: "run phase P of step k of task T"."""

    outbox_id: int
    task_id: uuid.UUID
    step_index: int
    phase: str
    priority: int


@dataclasses.dataclass(frozen=True)
class FileRecord:
    relative_path: str
    size_bytes: int
    sha256: str | None


def _now() -> datetime:
    return datetime.now(UTC)


def _add_wakeup(session: Session, task_id: uuid.UUID, step_index: int, phase: str, priority: int) -> Wakeup:
    """Insert (or re-arm) the outbox row for a wake-up, in the caller's transaction."""
    stmt = (
        insert(Outbox)
        .values(task_id=task_id, step_index=step_index, phase=phase, priority=priority)
        .on_conflict_do_update(
            constraint="uq_outbox_task_step_phase",
            set_={"published_at": None, "created_at": func.now()},
        )
        .returning(Outbox.id)
    )
    outbox_id = session.execute(stmt).scalar_one()
    return Wakeup(outbox_id, task_id, step_index, phase, priority)


def emit(session: Session, task_id: uuid.UUID, kind: str, step_index: int | None = None, **data: Any) -> None:
    """Append to the task's event log, in the caller's transaction (so an event exists iff its change does)."""
    session.execute(insert(TaskEvent).values(task_id=task_id, kind=kind, step_index=step_index, data=data))


def _clip(text: str | None, limit: int = 500) -> str | None:
    return text if text is None or len(text) <= limit else text[: limit - 1] + "…"


class Ledger:
    def __init__(self, db: Database) -> None:
        self.db = db

    # -- submission ------------------------------------------------------------------------------------------------

    def create_task(self, session: Session, values: dict[str, Any]) -> tuple[uuid.UUID, Wakeup] | None:
        """Insert a task, its first step and its first wake-up. ``None`` if the idempotency key is taken."""
        stmt = insert(Task).values(**values)
        if values.get("idempotency_key") is not None:
            stmt = stmt.on_conflict_do_nothing(constraint="uq_tasks_tenant_idempotency_key")
        task_id = session.execute(stmt.returning(Task.id)).scalar_one_or_none()
        if task_id is None:
            return None
        session.execute(insert(Step).values(task_id=task_id, step_index=0))
        emit(session, task_id, "task.queued", priority=values.get("priority", 5))
        return task_id, _add_wakeup(session, task_id, 0, "think", values.get("priority", 5))

    # -- the step protocol -----------------------------------------------------------------------------------------

    def claim(
        self,
        task_id: uuid.UUID,
        step_index: int,
        phase: str,
        owner: str,
        lease_ttl_s: float,
        max_deliveries: int,
    ) -> Claim:
        with self.db.transaction() as s:
            row = s.execute(
                select(Task.status, Step.status, Step.lease_token, Step.lease_expires_at, Step.deliveries)
                .join(Task, Task.id == Step.task_id)
                .where(Step.task_id == task_id, Step.step_index == step_index)
                .with_for_update(of=Step)
            ).one_or_none()
            if row is None:
                return Claim(ClaimOutcome.missing)
            task_status, step_status, token, expires, deliveries = row
            if step_status in ("completed", "failed"):
                return Claim(ClaimOutcome.committed)
            if task_status in TERMINAL_TASK:
                return Claim(ClaimOutcome.task_finished, reason=task_status)
            if phase == "think" and step_status in ("proposed", "acting"):
                return Claim(ClaimOutcome.advanced)
            if phase == "act" and step_status in ("pending", "thinking"):
                return Claim(ClaimOutcome.not_ready)
            now = _now()
            if token is not None and expires is not None and expires > now:
                return Claim(ClaimOutcome.lease_held, retry_in=(expires - now).total_seconds() + 0.2)
            if deliveries >= max_deliveries:
                reason = (
                    f"step {step_index} poisoned: {deliveries} deliveries without a commit "
                    f"(limit {max_deliveries}); last phase {phase}"
                )
                self._fail(s, task_id, step_index, reason)
                return Claim(ClaimOutcome.poisoned, deliveries=deliveries, reason=reason)
            new_token = uuid.uuid4()
            started = {"think_started_at": now} if phase == "think" else {"act_started_at": now}
            s.execute(
                update(Step)
                .where(Step.task_id == task_id, Step.step_index == step_index)
                .values(
                    status="thinking" if phase == "think" else "acting",
                    lease_owner=owner,
                    lease_token=new_token,
                    lease_expires_at=now + timedelta(seconds=lease_ttl_s),
                    deliveries=Step.deliveries + 1,
                    **started,
                )
            )
            if task_status == "queued":
                s.execute(
                    update(Task)
                    .where(Task.id == task_id, Task.status == "queued")
                    .values(status="running", started_at=func.coalesce(Task.started_at, func.now()))
                )
                emit(s, task_id, "task.started", step_index)
            # receiving this wake-up proves it was published
            queued_at = s.execute(
                update(Outbox)
                .where(Outbox.task_id == task_id, Outbox.step_index == step_index, Outbox.phase == phase)
                .values(published_at=func.coalesce(Outbox.published_at, func.now()))
                .returning(Outbox.created_at)
            ).scalar_one_or_none()
            return Claim(ClaimOutcome.claimed, token=new_token, deliveries=deliveries + 1, queued_at=queued_at)

    def renew(self, tokens: Sequence[uuid.UUID], lease_ttl_s: float) -> int:
        """Heartbeat: extend every lease this process still holds. Returns how many were extended."""
        if not tokens:
            return 0
        with self.db.transaction() as s:
            result = s.execute(
                update(Step)
                .where(Step.lease_token.in_(list(tokens)))
                .values(lease_expires_at=_now() + timedelta(seconds=lease_ttl_s))
            )
            return int(result.rowcount)  # type: ignore[attr-defined]

    def record_proposal(
        self, task_id: uuid.UUID, step_index: int, token: uuid.UUID, proposal: dict[str, Any]
    ) -> Wakeup | None:
        """Persist the model's proposal and the act wake-up; ``None`` if our lease was taken over."""
        usage = proposal.get("usage") or {}
        prompt_tokens = int(usage.get("prompt_tokens", 0))
        completion_tokens = int(usage.get("completion_tokens", 0))
        cost = float(proposal.get("cost_usd", 0.0))
        with self.db.transaction() as s:
            updated = s.execute(
                update(Step)
                .where(
                    Step.task_id == task_id,
                    Step.step_index == step_index,
                    Step.lease_token == token,
                    Step.status == "thinking",
                )
                .values(
                    status="proposed",
                    proposal=proposal,
                    command=proposal.get("command"),
                    arguments=proposal.get("arguments"),
                    prompt_tokens=prompt_tokens,
                    completion_tokens=completion_tokens,
                    cost_usd=cost,
                    model=proposal.get("model"),
                    llm_calls=Step.llm_calls + 1,
                    proposed_at=func.now(),
                    lease_owner=None,
                    lease_token=None,
                    lease_expires_at=None,
                )
                .returning(Step.id)
            ).scalar_one_or_none()
            if updated is None:
                return None
            priority = s.execute(
                update(Task)
                .where(Task.id == task_id)
                .values(
                    prompt_tokens=Task.prompt_tokens + prompt_tokens,
                    completion_tokens=Task.completion_tokens + completion_tokens,
                    cost_usd=Task.cost_usd + cost,
                    llm_calls=Task.llm_calls + 1,
                )
                .returning(Task.priority)
            ).scalar_one()
            emit(
                s,
                task_id,
                "step.proposed",
                step_index,
                command=proposal.get("command"),
                arguments=proposal.get("arguments"),
                thought=_clip((proposal.get("assistant_message") or {}).get("content")),
                error=_clip(proposal.get("error")),
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                cost_usd=cost,
            )
            return _add_wakeup(s, task_id, step_index, "act", priority)

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

        Returns (committed, wakeup). ``committed`` is False when our lease was taken over (fenced).
        """
        with self.db.transaction() as s:
            updated = s.execute(
                update(Step)
                .where(
                    Step.task_id == task_id,
                    Step.step_index == step_index,
                    Step.lease_token == token,
                    Step.status == "acting",
                )
                .values(
                    status="completed",
                    output=output,
                    is_error=is_error,
                    is_last=is_last,
                    committed_at=func.now(),
                    lease_owner=None,
                    lease_token=None,
                    lease_expires_at=None,
                )
                .returning(Step.id)
            ).scalar_one_or_none()
            if updated is None:
                return False, None
            values: dict[str, Any] = {"steps_completed": Task.steps_completed + 1}
            if is_last:
                values["status"] = case((Task.status.in_(TERMINAL_TASK), Task.status), else_="completed")
                values["finished_at"] = func.coalesce(Task.finished_at, func.now())
            task_status, priority = s.execute(
                update(Task).where(Task.id == task_id).values(**values).returning(Task.status, Task.priority)
            ).one()
            emit(s, task_id, "step.completed", step_index, output=_clip(output), is_error=is_error, is_last=is_last)
            for f in files:
                emit(s, task_id, "artifact.written", step_index, relative_path=f.relative_path, size_bytes=f.size_bytes)
                s.execute(
                    insert(Artifact)
                    .values(
                        task_id=task_id,
                        step_index=step_index,
                        relative_path=f.relative_path,
                        size_bytes=f.size_bytes,
                        sha256=f.sha256,
                    )
                    .on_conflict_do_update(
                        constraint="uq_artifacts_task_path",
                        set_={
                            "step_index": step_index,
                            "size_bytes": f.size_bytes,
                            "sha256": f.sha256,
                            "modified_at": func.now(),
                        },
                    )
                )
            if is_last and task_status == "completed":
                emit(s, task_id, "task.completed", step_index)
            if is_last or task_status in TERMINAL_TASK:
                return True, None
            s.execute(insert(Step).values(task_id=task_id, step_index=step_index + 1).on_conflict_do_nothing())
            return True, _add_wakeup(s, task_id, step_index + 1, "think", priority)

    def fail_task(self, task_id: uuid.UUID, step_index: int, token: uuid.UUID | None, reason: str) -> bool:
        """End the task ``failed`` with a reason, from the worker holding the step's lease."""
        with self.db.transaction() as s:
            if token is not None:
                held = s.execute(
                    select(Step.id)
                    .where(Step.task_id == task_id, Step.step_index == step_index, Step.lease_token == token)
                    .with_for_update()
                ).scalar_one_or_none()
                if held is None:
                    return False
            self._fail(s, task_id, step_index, reason)
            return True

    def release(self, task_id: uuid.UUID, step_index: int, token: uuid.UUID, error: str | None) -> Wakeup | None:
        """Hand a step back (transient failure, shutdown) and re-arm its wake-up; ``None`` if not ours."""
        with self.db.transaction() as s:
            row = s.execute(
                update(Step)
                .where(Step.task_id == task_id, Step.step_index == step_index, Step.lease_token == token)
                .values(
                    status=case((Step.status == "thinking", "pending"), else_="proposed"),
                    lease_owner=None,
                    lease_token=None,
                    lease_expires_at=None,
                    error=error,
                )
                .returning(Step.status)
            ).scalar_one_or_none()
            if row is None:
                return None
            priority = s.execute(select(Task.priority).where(Task.id == task_id)).scalar_one()
            return _add_wakeup(s, task_id, step_index, "think" if row == "pending" else "act", priority)

    @staticmethod
    def _fail(s: Session, task_id: uuid.UUID, step_index: int, reason: str) -> None:
        s.execute(
            update(Step)
            .where(Step.task_id == task_id, Step.step_index == step_index, Step.status.in_(OPEN_STEP))
            .values(
                status="failed",
                error=reason,
                committed_at=func.now(),
                lease_owner=None,
                lease_token=None,
                lease_expires_at=None,
            )
        )
        failed = s.execute(
            update(Task)
            .where(Task.id == task_id, Task.status.not_in(TERMINAL_TASK))
            .values(status="failed", error=reason, finished_at=func.now())
        )
        if failed.rowcount:  # type: ignore[attr-defined]
            emit(s, task_id, "task.failed", step_index, reason=reason)

    # -- reads for the agent ---------------------------------------------------------------------------------------

    def load_run(self, task_id: uuid.UUID, step_index: int) -> tuple[Task, list[Step], Step | None]:
        """The task, its committed history before ``step_index``, and the step itself."""
        with self.db.session() as s:
            task = s.get_one(Task, task_id)
            steps = list(
                s.scalars(
                    select(Step).where(Step.task_id == task_id, Step.step_index <= step_index).order_by(Step.step_index)
                )
            )
        current = steps[-1] if steps and steps[-1].step_index == step_index else None
        history = [st for st in steps if st.step_index < step_index and st.status == "completed"]
        return task, history, current

    # -- the outbox ------------------------------------------------------------------------------------------------

    def pending_wakeups(self, task_id: uuid.UUID) -> list[Wakeup]:
        with self.db.session() as s:
            rows = s.execute(
                select(Outbox.id, Outbox.task_id, Outbox.step_index, Outbox.phase, Outbox.priority).where(
                    Outbox.task_id == task_id, Outbox.published_at.is_(None)
                )
            ).all()
        return [Wakeup(*r) for r in rows]

    def mark_published(self, outbox_ids: Sequence[int]) -> None:
        if not outbox_ids:
            return
        with self.db.transaction() as s:
            s.execute(
                update(Outbox)
                .where(Outbox.id.in_(list(outbox_ids)), Outbox.published_at.is_(None))
                .values(published_at=func.now(), publish_attempts=Outbox.publish_attempts + 1)
            )

    # -- the reaper ------------------------------------------------------------------------------------------------

    def reap_expired_leases(self, limit: int = 500) -> list[Wakeup]:
        """Break leases that expired (their worker died or stalled) and re-arm their wake-ups."""
        with self.db.transaction() as s:
            rows = s.execute(
                select(Step.id, Step.task_id, Step.step_index, Step.status, Step.lease_owner)
                .where(Step.status.in_(("thinking", "acting")), Step.lease_expires_at < _now())
                .limit(limit)
                .with_for_update(skip_locked=True)
            ).all()
            wakeups: list[Wakeup] = []
            for step_id, task_id, step_index, status, owner in rows:
                s.execute(
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
                priority = s.execute(select(Task.priority).where(Task.id == task_id)).scalar_one()
                phase = "think" if status == "thinking" else "act"
                w = _add_wakeup(s, task_id, step_index, phase, priority)
                if w is not None:
                    wakeups.append(w)
            return wakeups

    def due_wakeups(self, older_than_s: float, limit: int = 500) -> list[Wakeup]:
        """Outbox rows nobody published within the grace period (a publisher died or the broker was down)."""
        with self.db.session() as s:
            rows = s.execute(
                select(Outbox.id, Outbox.task_id, Outbox.step_index, Outbox.phase, Outbox.priority)
                .join(Task, Task.id == Outbox.task_id)
                .where(
                    Outbox.published_at.is_(None),
                    Outbox.created_at < _now() - timedelta(seconds=older_than_s),
                    Task.status.not_in(TERMINAL_TASK),
                )
                .order_by(Outbox.created_at)
                .limit(limit)
            ).all()
        return [Wakeup(*r) for r in rows]
