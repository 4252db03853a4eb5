"""What a user can do to a running task: cancel, pause, resume, and approve (or edit, or answer) a proposed command.

Each call is one transaction on the task row (locked first, as in the ledger), then publishes the wake-up it
armed; it returns the task's status after the call. ``tenant_id`` scopes the call (a task of another tenant is
``TaskNotFound``); ``None`` skips the check.

Transitions (the runner and the ledger do the worker's half at each phase boundary, see ``runner``)::

    queued/running/awaiting_approval --cancel--> cancelled            nothing in flight: at once
    queued/running                   --cancel--> cancelling           a step holds a live lease: it stops at its
                                                 --> cancelled        next safe point (an LLM call is abandoned)
    queued/running/awaiting_approval --pause---> paused               the phase in flight finishes and is kept;
                                                                      no wake-up is written or acted on
    paused                           --resume--> running | queued | awaiting_approval   (the open step re-armed)
    awaiting_approval                --expire--> failed               nobody answered within approval_timeout_s
    awaiting_approval                --approve-> running              the step's command runs (as proposed or as
                                                                      edited); with feedback it does not run:
                                                                      the feedback is the step's observation

A cancelled task never runs another step: its open steps are cancelled and their leases cleared (a zombie holder is
fenced), and every later delivery is dropped by the claim. Events: ``task.cancel_requested``, ``task.cancelled``,
``task.paused``, ``task.resumed``, ``step.approved`` (the runner writes ``step.awaiting_approval``).

Approval policy (``TaskSubmission.approval``): ``"never"``, ``"always"``, or a list of side-effect classes (or
command names); ``approval_required`` decides per proposal and is the one place to extend.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from autogpt_workers.broker import Publisher
from autogpt_workers.errors import UsageError
from autogpt_workers.store.db import Database
from autogpt_workers.store.ledger import (
    ACTIVE_TASK,
    OPEN_STEP,
    TERMINAL_TASK,
    Ledger,
    TaskState,
    Wakeup,
    add_wakeup,
    cancel_now,
    emit,
    fail_now,
    lock_task,
)
from autogpt_workers.store.models import Outbox, Step, Task

log = structlog.get_logger(__name__)

CANCEL_REASON = "cancelled on request"
FEEDBACK_OBSERVATION = "The command was not run. A human reviewer says: {feedback}"
ANSWER_OBSERVATION = "The human answered: {feedback}"  # feedback to a command that asked a human (ask_user)
MAX_FEEDBACK_CHARS = 20_000


class TaskNotFound(UsageError):
    """No such task (or not this tenant's)."""


class LifecycleConflict(UsageError):
    """The task is not in a state that allows this (resume a task that is not paused, approve with nothing
    awaiting, cancel a finished task)."""


def approval_required(
    policy: Any, command: str | None, side_effect: str | None = None, awaits_human: bool = False
) -> bool:
    """Does this proposal wait for a human? ``policy`` is the task's approval setting; ``side_effect`` the
    command's side-effect class when commands declare one; ``awaits_human`` a command that asks a human
    (``ask_user``) always waits, whatever the policy. A proposal without a command never waits."""
    if command is None:
        return False
    if awaits_human:
        return True
    if policy in (None, "never"):
        return False
    if policy == "always":
        return True
    if isinstance(policy, Sequence) and not isinstance(policy, str):
        return command in policy or (side_effect is not None and side_effect in policy)
    return False


# -- the operations ----------------------------------------------------------------------------------------------


def cancel(db: Database, publisher: Publisher, task_id: uuid.UUID, *, tenant_id: str | None = None) -> str:
    """Ask the task to stop. ``cancelled`` at once when nothing is in flight, else ``cancelling`` until the step
    in flight reaches its next safe point. Cancelling a cancelled task is a no-op; a finished one is a conflict."""
    with db.transaction() as s:
        task = _lock(s, task_id, tenant_id)
        if task.status in ("cancelled", "cancelling"):
            return task.status
        if task.status in TERMINAL_TASK:
            raise LifecycleConflict(f"task {task_id} is already {task.status}: there is nothing to cancel")
        emit(s, task_id, "task.cancel_requested", previous=task.status)
        in_flight = s.execute(
            select(Step.step_index)
            .where(
                Step.task_id == task_id,
                Step.status.in_(("thinking", "acting")),
                Step.lease_expires_at > datetime.now(UTC),
            )
            .with_for_update()
        ).first()
        if in_flight is not None:
            s.execute(update(Task).where(Task.id == task_id).values(status="cancelling", error=CANCEL_REASON))
            status = "cancelling"
        else:
            cancel_now(s, task_id, CANCEL_REASON)
            status = "cancelled"
    log.info("task_cancel", task_id=str(task_id), status=status)
    return status


def pause(db: Database, publisher: Publisher, task_id: uuid.UUID, *, tenant_id: str | None = None) -> str:
    """Stop starting new phases. The phase in flight finishes and its result is kept (an LLM answer is not
    bought twice); resume continues from there."""
    with db.transaction() as s:
        task = _lock(s, task_id, tenant_id)
        if task.status == "paused":
            return "paused"
        if task.status in TERMINAL_TASK or task.status == "cancelling":
            raise LifecycleConflict(f"task {task_id} is {task.status}: it cannot be paused")
        s.execute(update(Task).where(Task.id == task_id).values(status="paused"))
        emit(s, task_id, "task.paused", previous=task.status)
    log.info("task_paused", task_id=str(task_id))
    return "paused"


def resume(db: Database, publisher: Publisher, task_id: uuid.UUID, *, tenant_id: str | None = None) -> str:
    """Continue a paused task from its last committed step: re-arm the wake-up of its open step."""
    wakeup: Wakeup | None = None
    with db.transaction() as s:
        task = _lock(s, task_id, tenant_id)
        if task.status != "paused":
            raise LifecycleConflict(f"task {task_id} is {task.status}, not paused: there is nothing to resume")
        step = s.execute(
            select(Step.step_index, Step.status, Step.lease_expires_at)
            .where(Step.task_id == task_id, Step.status.in_(OPEN_STEP))
            .order_by(Step.step_index.desc())
            .limit(1)
            .with_for_update()
        ).one_or_none()
        if step is not None and step.status == "awaiting_approval":
            status = "awaiting_approval"
        else:
            status = "running" if task.started_at is not None else "queued"
        s.execute(update(Task).where(Task.id == task_id).values(status=status))
        rearm = step is not None and step.status in ("pending", "proposed")
        if step is not None and rearm and not _held_for_admission(s, task_id, task, step):
            phase = "think" if step.status == "pending" else "act"
            wakeup = add_wakeup(s, task_id, step.step_index, phase, task.priority)
        # a phase still in flight (live lease) writes its own wake-up when it ends; an expired one is re-driven
        # by the reaper now that the task is active again
        emit(s, task_id, "task.resumed", step.step_index if step is not None else None, status=status)
    _publish(db, publisher, wakeup)
    log.info("task_resumed", task_id=str(task_id), status=status)
    return status


def approve(
    db: Database,
    publisher: Publisher,
    task_id: uuid.UUID,
    *,
    tenant_id: str | None = None,
    step_index: int | None = None,
    command: str | None = None,
    arguments: dict[str, Any] | None = None,
    feedback: str | None = None,
) -> str:
    """Release the step awaiting approval: as proposed; with ``command``/``arguments`` replaced (edited); or,
    with ``feedback``, without running its command (the feedback is its observation and the next step starts)."""
    if feedback is not None and (command is not None or arguments is not None):
        raise LifecycleConflict("give either feedback or an edited command/arguments, not both")
    if feedback is not None and not feedback.strip():
        raise LifecycleConflict("feedback must not be empty (approve without a body to run the command)")
    if feedback is not None and len(feedback) > MAX_FEEDBACK_CHARS:
        raise LifecycleConflict(f"feedback is longer than {MAX_FEEDBACK_CHARS} characters")
    if command is not None and not (0 < len(command.strip()) <= 128):
        raise LifecycleConflict("an edited command must be a command name of 1 to 128 characters")
    if arguments is not None and not isinstance(arguments, dict):
        raise LifecycleConflict("edited arguments must be a JSON object")
    wakeup: Wakeup | None = None
    with db.transaction() as s:
        task = _lock(s, task_id, tenant_id)
        step = s.execute(
            select(Step).where(Step.task_id == task_id, Step.status == "awaiting_approval").with_for_update()
        ).scalar_one_or_none()
        if step is None:
            raise LifecycleConflict(f"task {task_id} ({task.status}) has no step awaiting approval")
        if step_index is not None and step_index != step.step_index:
            raise LifecycleConflict(
                f"step {step_index} of task {task_id} is not awaiting approval (step {step.step_index} is)"
            )
        index = step.step_index
        active = task.status in ("awaiting_approval", *ACTIVE_TASK)
        status = "running" if active else task.status
        if task.status == "awaiting_approval":
            s.execute(update(Task).where(Task.id == task_id).values(status="running"))
        if feedback is not None:
            template = ANSWER_OBSERVATION if (step.proposal or {}).get("awaits_human") else FEEDBACK_OBSERVATION
            wakeup = _answer(s, task_id, index, feedback, task.priority, active, template)
        else:
            decision = "approved"
            if command is not None or arguments is not None:
                decision = "edited"
                _edit(s, step, command, arguments)
            emit(s, task_id, "step.approved", index, decision=decision, command=step.command,
                 arguments=step.arguments)
            s.execute(update(Step).where(Step.id == step.id).values(status="proposed"))
            if active:
                wakeup = add_wakeup(s, task_id, index, "act", task.priority)
    _publish(db, publisher, wakeup)
    log.info("step_approved", task_id=str(task_id), step=index, feedback=feedback is not None)
    return status


def expire_approvals(db: Database, timeout_s: float, limit: int = 500) -> list[uuid.UUID]:
    """End ``failed`` (code ``approval_expired``) the tasks that have waited for a human longer than ``timeout_s``:
    ``awaiting_approval --expire--> failed``. The wait counts from the proposal, or from the last change of the
    task (a resume), whichever is later; a paused task does not expire. The reaper calls it every round."""
    cutoff = datetime.now(UTC) - timedelta(seconds=timeout_s)
    waiting = (
        Step.status == "awaiting_approval",
        Step.proposed_at < cutoff,
        Task.status == "awaiting_approval",
        Task.updated_at < cutoff,
    )
    with db.session() as s:
        candidates = s.execute(
            select(Step.task_id, Step.step_index).join(Task, Task.id == Step.task_id).where(*waiting).limit(limit)
        ).all()
    expired: list[uuid.UUID] = []
    for task_id, index in candidates:
        with db.transaction() as s:
            if lock_task(s, task_id, skip_locked=True) is None:
                continue
            still = s.execute(
                select(Step.id).join(Task, Task.id == Step.task_id).where(Step.task_id == task_id, *waiting)
            ).first()
            reason = f"approval expired: step {index} waited more than {timeout_s:g} s for a human"
            if still is not None and fail_now(s, task_id, index, reason, code="approval_expired"):
                expired.append(task_id)
    if expired:
        log.info("approvals_expired", count=len(expired), timeout_s=timeout_s)
    return expired


def awaiting_step(db: Database, task_id: uuid.UUID) -> int | None:
    """The index of the task's step awaiting approval, if any."""
    with db.session() as s:
        return s.execute(
            select(Step.step_index).where(Step.task_id == task_id, Step.status == "awaiting_approval")
        ).scalar_one_or_none()


# -- helpers -----------------------------------------------------------------------------------------------------


def _lock(s: Session, task_id: uuid.UUID, tenant_id: str | None) -> TaskState:
    task = lock_task(s, task_id)
    if task is None or (tenant_id is not None and task.tenant_id != tenant_id):
        raise TaskNotFound(f"task {task_id} not found")
    return task


def _held_for_admission(s: Session, task_id: uuid.UUID, task: TaskState, step: Any) -> bool:
    """A task that never started and has no first wake-up is waiting in the admission queue: admission, not
    resume, releases it."""
    if task.started_at is not None or step.step_index != 0:
        return False
    outbox = s.execute(
        select(Outbox.id).where(Outbox.task_id == task_id, Outbox.step_index == 0)
    ).first()
    return outbox is None


def _edit(s: Session, step: Step, command: str | None, arguments: dict[str, Any] | None) -> None:
    """Replace the proposal's command and/or arguments, in the step and in the replayed assistant message."""
    new_command = command.strip() if command is not None else step.command
    new_arguments = arguments if arguments is not None else (step.arguments if command is None else {})
    proposal = dict(step.proposal or {})
    proposal["edited"] = {"command": step.command, "arguments": step.arguments, "at": datetime.now(UTC).isoformat()}
    proposal["command"] = new_command
    proposal["arguments"] = new_arguments
    message = dict(proposal.get("assistant_message") or {})
    calls = []
    for call in message.get("tool_calls") or []:
        if call.get("id") == proposal.get("tool_call_id"):
            call = {**call, "function": {"name": new_command, "arguments": json.dumps(new_arguments)}}
        calls.append(call)
    if calls:
        message["tool_calls"] = calls
        proposal["assistant_message"] = message
    s.execute(
        update(Step).where(Step.id == step.id).values(proposal=proposal, command=new_command, arguments=new_arguments)
    )
    step.command, step.arguments = new_command, new_arguments


def _answer(
    s: Session, task_id: uuid.UUID, index: int, feedback: str, priority: int, active: bool,
    template: str = FEEDBACK_OBSERVATION,
) -> Wakeup | None:
    """Complete the step without running its command; the human's feedback is what the model reads next."""
    output = template.format(feedback=feedback)
    s.execute(
        update(Step)
        .where(Step.task_id == task_id, Step.step_index == index)
        .values(status="completed", output=output, is_error=False, is_last=False, committed_at=func.now())
    )
    s.execute(update(Task).where(Task.id == task_id).values(steps_completed=Task.steps_completed + 1))
    emit(s, task_id, "step.approved", index, decision="feedback", feedback=feedback[:500])
    emit(s, task_id, "step.completed", index, output=output[:500], is_error=False, is_last=False)
    s.execute(insert(Step).values(task_id=task_id, step_index=index + 1).on_conflict_do_nothing())
    return add_wakeup(s, task_id, index + 1, "think", priority) if active else None


def _publish(db: Database, publisher: Publisher, wakeup: Wakeup | None) -> None:
    """Publish a wake-up armed by a committed transition; if the broker is down the reaper publishes it later."""
    if wakeup is None:
        return
    try:
        publisher.wake(wakeup.task_id, wakeup.step_index, wakeup.phase, wakeup.priority)
    except Exception as exc:
        log.warning("lifecycle_publish_deferred", task_id=str(wakeup.task_id), error=str(exc))
        return
    try:
        Ledger(db).mark_published([wakeup.outbox_id])
    except Exception as exc:  # harmless: the reaper may publish a duplicate, the ledger ignores it
        log.warning("lifecycle_mark_published_failed", task_id=str(wakeup.task_id), error=str(exc))
