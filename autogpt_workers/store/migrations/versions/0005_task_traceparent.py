"""task trace context: the W3C traceparent of the request that submitted the task

Every phase span of the task's steps is parented on it (see autogpt_workers/tracing.py), also when a wake-up
carries no trace headers (the reaper's re-drives, the dispatcher's admissions). NULL when tracing is off.

Revision ID: 0005_traceparent
Revises: 0004
Create Date: 2026-11-26 10:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_traceparent"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("tasks", sa.Column("traceparent", sa.String(length=128), nullable=True))


def downgrade() -> None:
    op.drop_column("tasks", "traceparent")
