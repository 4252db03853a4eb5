"""Tables of the front door: tenants and their API keys, what a caller asked for beyond the ledger's columns,
the admission queue of tasks waiting for a running slot, and the webhook delivery outbox.

``webhook_deliveries`` rows are written by a trigger on ``task_events`` (migration 0003) in the transaction that
writes the event, for tasks whose ``task_options.webhook_url`` is set and whose ``webhook_events`` patterns match:
a delivery exists iff its event does, whoever wrote the event.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    SmallInteger,
    String,
    Text,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID
from sqlalchemy.orm import Mapped, Session, mapped_column

from autogpt_workers.store.models import Base, _now_default


class Tenant(Base):
    """A customer. Limits left NULL fall back to the settings' defaults."""

    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    webhook_secret: Mapped[str] = mapped_column(String(128))  # HMAC key for this tenant's webhooks (not a login)
    rate_per_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    rate_burst: Mapped[int | None] = mapped_column(Integer, nullable=True)
    max_running: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_now_default())


class ApiKey(Base):
    """An API key, stored as the SHA-256 of the secret (keys are 256-bit random: no salt or KDF needed)."""

    __tablename__ = "api_keys"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[str] = mapped_column(String(64), ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(128), default="", server_default="")
    prefix: Mapped[str] = mapped_column(String(16))  # the key's first characters, to recognise it in listings
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_now_default())
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class TaskOptions(Base):
    """What a caller asked for that the ledger does not need: where it came from, webhook, profile, input."""

    __tablename__ = "task_options"

    task_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("tasks.id", ondelete="CASCADE"), primary_key=True
    )
    source: Mapped[str] = mapped_column(String(16), default="native", server_default="native")  # native | ap
    base_priority: Mapped[int] = mapped_column(SmallInteger)  # as requested; tasks.priority is the effective one
    profile: Mapped[str | None] = mapped_column(String(64), nullable=True)
    webhook_url: Mapped[str | None] = mapped_column(Text, nullable=True)
    webhook_events: Mapped[list[str]] = mapped_column(ARRAY(String(64)), default=list)
    additional_input: Mapped[dict[str, Any] | None] = mapped_column(JSONB, nullable=True)


class AdmissionQueue(Base):
    """Tasks accepted but held back by a running-task cap; the dispatcher admits them as slots free."""

    __tablename__ = "admission_queue"

    task_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("tasks.id", ondelete="CASCADE"), primary_key=True
    )
    tenant_id: Mapped[str] = mapped_column(String(64), index=True)
    enqueued_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_now_default())


class StepRequest(Base):
    """The Agent Protocol request that released a step (its input is the human's answer to the proposal)."""

    __tablename__ = "ap_step_requests"

    task_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("tasks.id", ondelete="CASCADE"), primary_key=True
    )
    step_index: Mapped[int] = mapped_column(Integer, primary_key=True)
    input: Mapped[str | None] = mapped_column(Text, nullable=True)
    additional_input: Mapped[dict[str, Any] | None] = mapped_column(JSONB, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_now_default())


class WebhookDelivery(Base):
    """One event to POST to one URL: pending -> delivered | dead, retried with backoff in between."""

    __tablename__ = "webhook_deliveries"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    event_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("task_events.id", ondelete="CASCADE"), unique=True)
    task_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), ForeignKey("tasks.id", ondelete="CASCADE"))
    url: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default="pending", server_default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_now_default())
    locked_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    payload: Mapped[dict[str, Any] | None] = mapped_column(JSONB, nullable=True)  # fixed at the first attempt
    last_status: Mapped[int | None] = mapped_column(Integer, nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_now_default())
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)

    __table_args__ = (
        Index("ix_webhook_deliveries_due", "next_attempt_at", postgresql_where=text("status = 'pending'")),
        Index("ix_webhook_deliveries_task", "task_id"),
    )


def record_options(
    s: Session,
    task_id: uuid.UUID,
    *,
    source: str,
    base_priority: int,
    profile: str | None,
    webhook_url: str | None,
    webhook_events: list[str],
    additional_input: dict[str, Any] | None,
) -> None:
    """Store a new task's options, in its submitting transaction, and enqueue webhooks for the events written
    before them (``task.queued``): the trigger only sees events written after."""
    s.add(
        TaskOptions(
            task_id=task_id,
            source=source,
            base_priority=base_priority,
            profile=profile,
            webhook_url=webhook_url,
            webhook_events=webhook_events,
            additional_input=additional_input,
        )
    )
    s.flush()
    if webhook_url is not None:
        s.execute(
            text(
                "INSERT INTO webhook_deliveries (event_id, task_id, url) "
                "SELECT e.id, e.task_id, :url FROM task_events e "
                "WHERE e.task_id = :task_id AND EXISTS (SELECT 1 FROM unnest(CAST(:patterns AS varchar[])) p "
                "WHERE e.kind LIKE replace(replace(replace(p, '\\', '\\\\'), '_', '\\_'), '*', '%')) "
                "ON CONFLICT (event_id) DO NOTHING"
            ),
            {"url": webhook_url, "task_id": task_id, "patterns": webhook_events},
        )
