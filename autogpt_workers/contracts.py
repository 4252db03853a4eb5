"""The platform's public vocabulary: pure pydantic, shared by the API, the submit function and the workers.

Nothing here imports Celery, SQLAlchemy or openai, so any service may depend on it.
"""

from __future__ import annotations

import enum
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from autogpt_workers.agent.types import Budget

THINK_TASK = "autogpt.think"
ACT_TASK = "autogpt.act"
THINK_QUEUE = "autogpt.think"
ACT_QUEUE = "autogpt.act"
DEAD_LETTER_EXCHANGE = "autogpt.dlx"
DEAD_LETTER_QUEUE = "autogpt.dead"
MAX_PRIORITY = 9
PHASE_TASKS = {"think": THINK_TASK, "act": ACT_TASK}
PHASE_QUEUES = {"think": THINK_QUEUE, "act": ACT_QUEUE}


class TaskStatus(enum.StrEnum):
    queued = "queued"
    running = "running"
    completed = "completed"
    failed = "failed"
    cancelled = "cancelled"
    paused = "paused"  # no step starts until resumed (see autogpt_workers.lifecycle)
    cancelling = "cancelling"  # cancel requested: the in-flight step stops at its next safe point
    awaiting_approval = "awaiting_approval"  # a proposal waits for a human (approval mode)

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({TaskStatus.completed, TaskStatus.failed, TaskStatus.cancelled})
TERMINAL_EVENTS = ("task.completed", "task.failed", "task.cancelled")
# an event kind ("task.completed") or a glob of kinds ("step.*", "*")
EventPattern = Annotated[str, Field(pattern=r"^(\*|[a-z_]{1,30}\.(\*|[a-z_]{1,30}))$")]


class StepStatus(enum.StrEnum):
    pending = "pending"
    thinking = "thinking"
    proposed = "proposed"
    acting = "acting"
    completed = "completed"
    failed = "failed"
    awaiting_approval = "awaiting_approval"  # proposed; its command runs once a human approves it
    cancelled = "cancelled"

# Approval policy: "never", "always", or a list of command side-effect classes (or command names) that need it.
ApprovalPolicy = Literal["never", "always"] | list[Annotated[str, Field(min_length=1, max_length=64)]]


class TaskSubmission(BaseModel):
    """What a caller asks for. Validated at the edge; stored as given."""

    model_config = ConfigDict(extra="forbid")

    goal: str = Field(min_length=1, max_length=20_000, description="What the agent should achieve.")
    priority: int = Field(default=5, ge=0, le=MAX_PRIORITY, description="0 (lowest) to 9 (highest).")
    budget: Budget = Field(default_factory=Budget)
    allowed_commands: list[str] | None = Field(
        default=None, max_length=100, description="Commands this task may use; all registered ones if omitted."
    )
    metadata: dict[str, Any] = Field(default_factory=dict)
    profile: str | None = Field(
        default=None, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", description="Agent profile name."
    )
    webhook_url: str | None = Field(
        default=None,
        max_length=2048,
        pattern=r"^https?://[^\s]+$",
        description="POST each subscribed event here, signed (see the README, Webhooks).",
    )
    webhook_events: list[EventPattern] = Field(
        default_factory=lambda: list(TERMINAL_EVENTS),
        max_length=32,
        description='Event kinds to deliver; globs allowed ("step.*", "*"). Default: the terminal events.',
    )
    approval: ApprovalPolicy = Field(
        default="never",
        description='"always": each proposed command waits for POST /v1/tasks/{id}/approve; a list: only commands '
        "of those side-effect classes wait.",
    )
    deadline: datetime | None = Field(
        default=None, description="Past it the task ends failed (reason deadline) at its next step boundary."
    )

    @field_validator("approval")
    @classmethod
    def _approval_list_bounded(cls, v: ApprovalPolicy) -> ApprovalPolicy:
        if isinstance(v, list) and len(v) > 32:
            raise ValueError("approval lists at most 32 classes")
        return v

    @field_validator("deadline")
    @classmethod
    def _deadline_in_future(cls, v: datetime | None) -> datetime | None:
        if v is None:
            return None
        if v.tzinfo is None:  # a naive time is UTC
            v = v.replace(tzinfo=UTC)
        if v <= datetime.now(UTC):
            raise ValueError("deadline must be in the future")
        return v

    @field_validator("goal")
    @classmethod
    def _goal_not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("goal must not be blank")
        if "\x00" in v:
            raise ValueError("goal must not contain NUL characters")
        return v


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cost_usd: float
    llm_calls: int


class TaskView(BaseModel):
    id: uuid.UUID
    status: TaskStatus
    goal: str
    priority: int
    budget: Budget
    steps_completed: int
    usage: Usage
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    metadata: dict[str, Any]
    allowed_commands: list[str] | None = None
    profile: str | None = None
    webhook_url: str | None = None
    webhook_events: list[str] = Field(default_factory=list)
    effective_priority: int | None = Field(default=None, description="Priority after deadline urgency.")
    waiting_for_slot: bool = Field(
        default=False, description="Waiting in the admission queue (a running-task cap, or every worker busy)."
    )
    deadline: datetime | None = Field(default=None, description="Past it the task ends failed (reason deadline).")
    approval: ApprovalPolicy = Field(default="never", description="Which proposed commands wait for an approval.")


class TaskPage(BaseModel):
    """One page of ``GET /v1/tasks``; pass ``next_cursor`` as ``cursor`` for the next one (null: no more)."""

    tasks: list[TaskView]
    next_cursor: str | None


class StepView(BaseModel):
    step_index: int
    status: StepStatus
    command: str | None
    arguments: dict[str, Any] | None
    thought: str | None
    output: str | None
    is_error: bool
    is_last: bool
    error: str | None
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    deliveries: int
    created_at: datetime
    committed_at: datetime | None


class ArtifactView(BaseModel):
    artifact_id: uuid.UUID
    relative_path: str
    size_bytes: int
    step_index: int | None
    created_at: datetime
