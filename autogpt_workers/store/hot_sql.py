"""The ledger's statements (propose, commit, wake-ups, events, history), built once with bind parameters.

A running task's claim, proposal and commit go through ``phase_sql`` (one statement per transaction); these serve
the other transitions (pause, cancel, approval, the last step) and the helpers the API and the reaper share.

Building a SQLAlchemy statement and computing its cache key cost more CPU than PostgreSQL spends running it; a
statement built once is compiled once and then only bound, so a phase's transaction costs a few hundred
microseconds of Python instead of several milliseconds. The ledger runs them on the session's connection with a
parameter dict (names prefixed ``p_``: SQLAlchemy reserves the column names in SET / VALUES clauses).
"""

from __future__ import annotations

from sqlalchemy import bindparam, case, func, insert, select, update
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.dialects.postgresql import insert as pg_insert

from autogpt_workers.store.models import Artifact, Outbox, Step, Task, TaskEvent

THINK_DELIVERIES = "think_deliveries"  # recorded in the proposal: the act phase's redelivery budget starts after it
TERMINAL_TASK = ("completed", "failed", "cancelled")

_task = Task.id == bindparam("p_task_id")
_step = (Step.task_id == bindparam("p_task_id"), Step.step_index == bindparam("p_step_index"))
_held = (*_step, Step.lease_token == bindparam("p_token"))

TASK_STATE_COLUMNS = (
    Task.status, Task.tenant_id, Task.priority, Task.deadline, Task.error, Task.steps_completed, Task.started_at
)
LOCK_TASK = select(*TASK_STATE_COLUMNS).where(_task).with_for_update(key_share=True)
LOCK_TASK_SKIP_LOCKED = select(*TASK_STATE_COLUMNS).where(_task).with_for_update(key_share=True, skip_locked=True)

START_TASK = (
    update(Task)
    .where(_task, Task.status == "queued")
    .values(status="running", started_at=func.coalesce(Task.started_at, func.now()))
)

ADD_WAKEUP = (
    pg_insert(Outbox)
    .values(
        task_id=bindparam("p_task_id"),
        step_index=bindparam("p_step_index"),
        phase=bindparam("p_phase"),
        priority=bindparam("p_priority"),
    )
    .on_conflict_do_update(
        constraint="uq_outbox_task_step_phase", set_={"published_at": None, "created_at": func.now()}
    )
    .returning(Outbox.id)
)

EMIT = insert(TaskEvent).values(
    task_id=bindparam("p_task_id"),
    kind=bindparam("p_kind"),
    step_index=bindparam("p_step_index"),
    data=bindparam("p_data", type_=JSONB),
)

_PROPOSAL_VALUES = {
    # the think phase's deliveries, so the act phase gets its own redelivery budget
    "proposal": bindparam("p_proposal", type_=JSONB).op("||")(
        func.jsonb_build_object(THINK_DELIVERIES, Step.deliveries)
    ),
    "command": bindparam("p_command"),
    "arguments": bindparam("p_arguments", type_=JSONB),
    "prompt_tokens": bindparam("p_prompt_tokens"),
    "completion_tokens": bindparam("p_completion_tokens"),
    "cost_usd": bindparam("p_cost"),
    "model": bindparam("p_model"),
    "llm_calls": Step.llm_calls + 1,
    "proposed_at": func.now(),
}

PROPOSE_STEP = (
    update(Step)
    .where(*_held, Step.status == "thinking")
    .values(
        {
            **_PROPOSAL_VALUES,
            "status": bindparam("p_status"),
            "lease_owner": None,
            "lease_token": None,
            "lease_expires_at": None,
        }
    )
    .returning(Step.id)
)

# the proposal, and the act phase claimed at once by the same holder under the same lease (a command the think
# worker runs itself): what the act phase's claim would write, without a wake-up in between
PROPOSE_STEP_ACTING = (
    update(Step)
    .where(*_held, Step.status == "thinking")
    .values(
        {
            **_PROPOSAL_VALUES,
            "status": "acting",
            "lease_expires_at": bindparam("p_expires"),
            "deliveries": Step.deliveries + 1,
            "act_started_at": func.now(),
        }
    )
    .returning(Step.id)
)

PROPOSE_TASK = (
    update(Task)
    .where(_task)
    .values(
        prompt_tokens=Task.prompt_tokens + bindparam("p_prompt_tokens"),
        completion_tokens=Task.completion_tokens + bindparam("p_completion_tokens"),
        cost_usd=Task.cost_usd + bindparam("p_cost"),
        llm_calls=Task.llm_calls + 1,
    )
)

COMMIT_STEP = (
    update(Step)
    .where(*_held, Step.status == "acting")
    .values(
        status="completed",
        output=bindparam("p_output"),
        is_error=bindparam("p_is_error"),
        is_last=bindparam("p_is_last"),
        committed_at=func.now(),
        lease_owner=None,
        lease_token=None,
        lease_expires_at=None,
    )
    .returning(Step.id)
)

COMMIT_TASK = update(Task).where(_task).values(steps_completed=Task.steps_completed + 1).returning(Task.status)
COMMIT_LAST_TASK = (
    update(Task)
    .where(_task)
    .values(
        steps_completed=Task.steps_completed + 1,
        status=case((Task.status.in_(TERMINAL_TASK), Task.status), else_="completed"),
        finished_at=func.coalesce(Task.finished_at, func.now()),
    )
    .returning(Task.status)
)

NEXT_STEP = (
    pg_insert(Step)
    .values(task_id=bindparam("p_task_id"), step_index=bindparam("p_step_index"))
    .on_conflict_do_nothing()
)

UPSERT_ARTIFACT = (
    pg_insert(Artifact)
    .values(
        task_id=bindparam("p_task_id"),
        step_index=bindparam("p_step_index"),
        relative_path=bindparam("p_relative_path"),
        size_bytes=bindparam("p_size_bytes"),
        sha256=bindparam("p_sha256"),
    )
    .on_conflict_do_update(
        constraint="uq_artifacts_task_path",
        set_={
            "step_index": bindparam("p_step_index"),
            "size_bytes": bindparam("p_size_bytes"),
            "sha256": bindparam("p_sha256"),
            "modified_at": func.now(),
        },
    )
)

MARK_PUBLISHED = (
    update(Outbox)
    .where(Outbox.id.in_(bindparam("p_ids", expanding=True)), Outbox.published_at.is_(None))
    .values(published_at=func.now(), publish_attempts=Outbox.publish_attempts + 1)
)

# what a claimed phase needs of its task (read in the claim's transaction; plain columns, no ORM object to load)
RUN_TASK_COLUMNS = (
    Task.id,
    Task.goal,
    Task.budget,
    Task.steps_completed,
    Task.prompt_tokens,
    Task.completion_tokens,
    Task.cost_usd,
    Task.started_at,
    Task.created_at,
    Task.allowed_commands,
    Task.approval,
    Task.priority,
)
STEP_PROPOSAL = select(Step.proposal).where(*_step)

HISTORY = (
    select(Step.step_index, Step.proposal, Step.output, Step.is_error, Step.is_last)
    .where(Step.task_id == bindparam("p_task_id"), Step.step_index < bindparam("p_step_index"))
    .where(Step.step_index >= bindparam("p_history_from"), Step.status == "completed")
    .order_by(Step.step_index)
)
