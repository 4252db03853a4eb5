"""SQLAlchemy 2.0 models: tasks, the step ledger, artifacts and the outbox.

The step ledger is the source of truth for a run. ``UNIQUE(task_id, step_index)`` makes "step k of task T" one row
whatever the broker delivers; the lease columns (owner, token, expiry) say who may write to it right now.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSONB, list[Any]: JSONB}


def _now_default() -> Any:
    return func.now()


class Task(Base):
    __tablename__ = "tasks"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[str] = mapped_column(String(64), default="default", server_default="default")
    goal: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(32), default="queued", server_default="queued")
    priority: Mapped[int] = mapped_column(SmallInteger, default=5, server_default="5")
    budget: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
    allowed_commands: Mapped[list[Any] | None] = mapped_column(JSONB, nullable=True)
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JSONB, default=dict)
    idempotency_key: Mapped[str | None] = mapped_column(String(255), nullable=True)
    request_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    model: Mapped[str | None] = mapped_column(String(128), nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    # lifecycle (revision 0004): "never" | "always" | [side-effect classes]; past the deadline the task fails
    approval: Mapped[Any] = mapped_column(JSONB, default="never", server_default=text("'\"never\"'::jsonb"))
    deadline: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # tracing (revision 0005): the W3C traceparent of the submit, parent of every step's spans; NULL: untraced
    traceparent: Mapped[str | None] = mapped_column(String(128), nullable=True)
    # running totals, kept in step with the ledger in the same transactions that change it
    steps_completed: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    prompt_tokens: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    completion_tokens: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    cost_usd: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    llm_calls: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_now_default())
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=_now_default(), onupdate=func.now()
    )
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)

    __table_args__ = (
        UniqueConstraint("tenant_id", "idempotency_key", name="uq_tasks_tenant_idempotency_key"),
        Index("ix_tasks_status_created", "status", "created_at"),
        # the finished tasks by when they finished (migration 0011): the reaper's retention round reads the oldest
        Index(
            "ix_tasks_finished", "finished_at",
            postgresql_where=text("status IN ('completed', 'failed', 'cancelled')"),
        ),
        Index("ix_tasks_tenant_created", "tenant_id", "created_at"),
        Index("ix_tasks_deadline", "deadline", postgresql_where=text("deadline IS NOT NULL")),
        # the unfinished tasks only (migration 0009): admission, priority refresh, deadlines, metrics and the stuck
        # detector read these, and must not read every task ever run
        Index(
            "ix_tasks_unfinished", "tenant_id", "status",
            postgresql_where=text("status NOT IN ('completed', 'failed', 'cancelled')"),
        ),
    )


class Step(Base):
    """One agent step: think (LLM proposal) then act (command), each phase under a lease."""

    __tablename__ = "steps"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    task_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("tasks.id", ondelete="CASCADE"), index=False
    )
    step_index: Mapped[int] = mapped_column(Integer)
    # pending -> thinking -> proposed [-> awaiting_approval -> proposed] -> acting -> completed | failed | cancelled
    status: Mapped[str] = mapped_column(String(32), default="pending", server_default="pending")
    lease_owner: Mapped[str | None] = mapped_column(String(255), nullable=True)
    lease_token: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True), nullable=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    deliveries: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    llm_calls: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    proposal: Mapped[dict[str, Any] | None] = mapped_column(JSONB, nullable=True)
    command: Mapped[str | None] = mapped_column(String(128), nullable=True)
    arguments: Mapped[dict[str, Any] | None] = mapped_column(JSONB, nullable=True)
    output: Mapped[str | None] = mapped_column(Text, nullable=True)
    is_error: Mapped[bool] = mapped_column(Boolean, default=False, server_default="false")
    is_last: Mapped[bool] = mapped_column(Boolean, default=False, server_default="false")
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    cost_usd: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    model: Mapped[str | None] = mapped_column(String(128), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_now_default())
    think_started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    proposed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    act_started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    committed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)

    __table_args__ = (
        UniqueConstraint("task_id", "step_index", name="uq_steps_task_step"),
        Index(
            "ix_steps_lease_open",
            "lease_expires_at",
            postgresql_where=text("status IN ('pending','thinking','proposed','acting')"),
        ),
    )


class Artifact(Base):
    __tablename__ = "artifacts"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    task_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), ForeignKey("tasks.id", ondelete="CASCADE"))
    step_index: Mapped[int | None] = mapped_column(Integer, nullable=True)
    relative_path: Mapped[str] = mapped_column(Text)
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_now_default())
    modified_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_now_default())

    __table_args__ = (UniqueConstraint("task_id", "relative_path", name="uq_artifacts_task_path"),)


class Outbox(Base):
    """Wake-ups committed with the state change that causes them; a relay publishes them after commit."""

    __tablename__ = "outbox"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    task_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), ForeignKey("tasks.id", ondelete="CASCADE"))
    step_index: Mapped[int] = mapped_column(Integer)
    phase: Mapped[str] = mapped_column(String(16))  # think | act
    priority: Mapped[int] = mapped_column(SmallInteger, default=5)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_now_default())
    published_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    publish_attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")

    __table_args__ = (
        UniqueConstraint("task_id", "step_index", "phase", name="uq_outbox_task_step_phase"),
        Index("ix_outbox_unpublished", "created_at", postgresql_where=text("published_at IS NULL")),
        # the reaper's prune reads the old published rows by this (revision 0010)
        Index("ix_outbox_published", "published_at", postgresql_where=text("published_at IS NOT NULL")),
    )


class TaskEvent(Base):
    """The task's life as an append-only log, written in the same transaction as the change it describes.

    Event streams (SSE), webhooks and metrics read it; ``id`` orders it and is the stream's event id.
    """

    __tablename__ = "task_events"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    task_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), ForeignKey("tasks.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(32))
    step_index: Mapped[int | None] = mapped_column(Integer, nullable=True)
    data: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_now_default())

    __table_args__ = (Index("ix_task_events_task_id_id", "task_id", "id"),)
