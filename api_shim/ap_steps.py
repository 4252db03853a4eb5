"""Agent Protocol step semantics over asynchronous workers.

A task created through the protocol runs step by step (approval "always"): the workers propose step k and wait.
``POST .../steps`` releases the proposal waiting (an empty input or ``y`` approves it; any other input is feedback
to the agent, which then proposes again, as AutoGPT does) and waits up to ``ap_step_wait_s`` for that step to be
committed, then answers it; past the bound it answers the step as ``running``. The first request's input is
ignored when it repeats the task's input (the protocol's clients send the task input again to start). If the bound
runs out before the step's proposal exists, the request is recorded and applied when the proposal lands
(``autogpt_workers.preapproval``): the client need not POST again.

A repeated POST while a step is in flight answers that step and releases nothing: the step a request answers is
fixed when it first sees the task (the one waiting for approval, which it releases, else the one in flight), and
the lifecycle's ``approve`` takes a step index, so two requests racing for one proposal release it once.

A request may edit the proposal instead of approving it as proposed: ``additional_input: {"command": name,
"arguments": {...}}`` (either key alone keeps the other as proposed), as ``POST /v1/tasks/{id}/approve`` does; the
worker checks the edit against the task's allow-list and the command's schema, and observes a misfit as an error.
An edit with feedback text (an input other than empty, ``y`` or the task's input) is refused.

In continuous mode (``additional_input: {"mode": "continuous"}``) nothing waits for approval: a POST waits for the
step in flight and answers it. After the last step a POST answers the last step with ``is_last: true``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
import uuid
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from autogpt_workers import preapproval
from autogpt_workers.broker import Publisher
from autogpt_workers.store.db import Database
from autogpt_workers.store.gateway import StepRequest, TaskOptions
from autogpt_workers.store.ledger import TERMINAL_TASK
from autogpt_workers.store.models import Step, Task


def awaiting_step(db: Database, task_id: uuid.UUID) -> int | None:
    """The step waiting for a human's approval, if any (the lifecycle decides)."""
    from autogpt_workers import lifecycle

    return lifecycle.awaiting_step(db, task_id)


APPROVALS = frozenset({"", "y", "yes"})
COMMITTED = ("completed", "failed", "cancelled")
POLL_S = 0.1


@dataclasses.dataclass(frozen=True)
class Snapshot:
    status: str
    goal: str
    steps: dict[int, str]  # step index -> ledger status
    awaiting: int | None
    requested: frozenset[int]  # steps some request already released


@dataclasses.dataclass(frozen=True)
class Edit:
    command: str | None  # None: the proposed command
    arguments: dict[str, Any] | None  # None: the proposed arguments


def edit_of(additional_input: dict[str, Any] | None) -> Edit | None:
    """The edited command a step request carries (``command`` / ``arguments``), or None; ``ValueError`` with a
    message for the caller if it is malformed."""
    extra = additional_input or {}
    command, arguments = extra.get("command"), extra.get("arguments")
    if command is None and arguments is None:
        return None
    if command is not None and (not isinstance(command, str) or not 0 < len(command.strip()) <= 128):
        raise ValueError("additional_input.command must be a command's name (1 to 128 characters)")
    if arguments is not None and not isinstance(arguments, dict):
        raise ValueError("additional_input.arguments must be a JSON object")
    return Edit(command, arguments)


def is_approval(text: str | None, goal: str) -> bool:
    """Does this input approve (empty, ``y``, or the task's own input repeated) rather than answer with feedback?"""
    answer = (text or "").strip()
    return answer.lower() in APPROVALS or answer == goal.strip()


def continuous(additional_input: dict[str, Any] | None) -> bool:
    extra = additional_input or {}
    return extra.get("mode") == "continuous" or extra.get("continuous") is True


def _snapshot(db: Database, task_id: uuid.UUID) -> Snapshot:
    with db.session() as s:
        task = s.get_one(Task, task_id, populate_existing=True)
        rows = s.execute(select(Step.step_index, Step.status).where(Step.task_id == task_id))
        steps = {index: status for index, status in rows}
        requested = frozenset(s.scalars(select(StepRequest.step_index).where(StepRequest.task_id == task_id)))
    return Snapshot(task.status, task.goal, steps, awaiting_step(db, task_id), requested)


def is_continuous(s: Session, task_id: uuid.UUID) -> bool:
    options = s.get(TaskOptions, task_id)
    return options is not None and continuous(options.additional_input)


class NothingToEdit(Exception):
    """An edited command was sent, but no proposal waits for this request to release: an edit answers the proposal
    the human saw, so it is refused rather than recorded for a proposal nobody has seen, or dropped."""


async def execute_step(
    db: Database,
    publisher: Publisher,
    task_id: uuid.UUID,
    tenant_id: str,
    text: str | None,
    extra: dict[str, Any],
    wait_s: float,
) -> int | None:
    """Advance the task by (at most) one step and wait for it. Returns the index of the step to answer (None if
    the task has no step at all, which only a task cancelled before it started can have)."""
    deadline = time.monotonic() + wait_s
    target: int | None = None
    edit = edit_of(extra)
    while True:
        snap = await run_in_threadpool(_snapshot, db, task_id)
        if target is None:
            if edit is not None and (snap.awaiting is None or snap.awaiting in snap.requested):
                raise NothingToEdit(
                    "no proposed command is waiting for this request: an edit replaces a proposal you have seen "
                    "(GET the task's steps, then POST the edit while the step waits for approval)"
                )
            recorded = [k for k in snap.requested if snap.steps.get(k) not in COMMITTED]
            if snap.awaiting is not None and snap.awaiting in snap.requested:
                # an earlier request, recorded before this proposal existed, answers it (if the worker did not yet)
                target = snap.awaiting
                await run_in_threadpool(preapproval.honour, db, publisher, task_id, target)
            elif snap.awaiting is not None:
                target = snap.awaiting
                await run_in_threadpool(_release, db, publisher, task_id, tenant_id, snap, text, extra)
            elif snap.status in TERMINAL_TASK:
                return max(snap.steps) if snap.steps else None
            else:
                in_flight = [k for k, st in snap.steps.items() if st in ("proposed", "acting")]
                if in_flight:  # released by an earlier request: answer it, start nothing
                    target = in_flight[0]
                elif recorded:  # an earlier request waits for this step's proposal: answer it, record nothing
                    target = min(recorded)
                elif await run_in_threadpool(_continuous, db, task_id):
                    open_ = [k for k, st in snap.steps.items() if st not in COMMITTED]
                    target = min(open_) if open_ else None
        if target is not None and (snap.steps.get(target) in COMMITTED or snap.status in TERMINAL_TASK):
            return target
        if time.monotonic() >= deadline:
            if target is not None:
                return target
            open_steps = [k for k, st in snap.steps.items() if st not in COMMITTED]
            if not open_steps:
                return max(snap.steps) if snap.steps else None
            await run_in_threadpool(_record_for_proposal, db, publisher, task_id, min(open_steps), text, extra)
            return min(open_steps)
        await asyncio.sleep(POLL_S)


def _record_for_proposal(
    db: Database, publisher: Publisher, task_id: uuid.UUID, step_index: int, text: str | None, extra: dict[str, Any]
) -> None:
    """The bound ran out before the step's proposal existed: record the request, so the proposal is approved (or
    answered) when it lands without another POST; if it landed meanwhile, apply the request now."""
    preapproval.record(db, task_id, step_index, text, extra)
    preapproval.honour(db, publisher, task_id, step_index)


def _continuous(db: Database, task_id: uuid.UUID) -> bool:
    with db.session() as s:
        return is_continuous(s, task_id)


def _release(
    db: Database,
    publisher: Publisher,
    task_id: uuid.UUID,
    tenant_id: str,
    snap: Snapshot,
    text: str | None,
    extra: dict[str, Any],
) -> None:
    from autogpt_workers import lifecycle

    assert snap.awaiting is not None
    answer = (text or "").strip()
    first = not snap.requested and snap.awaiting == 0
    edit = edit_of(extra)  # validated by the route
    approve = edit is not None or answer.lower() in APPROVALS or (first and answer == snap.goal.strip())
    preapproval.record(db, task_id, snap.awaiting, text, extra)
    # LifecycleConflict: another request released it first; this one answers the same step
    with contextlib.suppress(lifecycle.LifecycleConflict):
        lifecycle.approve(
            db,
            publisher,
            task_id,
            tenant_id=tenant_id,
            step_index=snap.awaiting,
            command=edit.command if edit else None,
            arguments=edit.arguments if edit else None,
            feedback=None if approve else answer,
        )
