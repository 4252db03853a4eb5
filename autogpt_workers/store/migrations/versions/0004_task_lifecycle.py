"""task lifecycle: approval policy and deadline on tasks; room for the longer statuses

Statuses added by the lifecycle (``awaiting_approval``, ``cancelling``, ``paused``; step ``cancelled``) need
more than 16 characters, so both status columns widen to 32.

Revision ID: 0004
Revises: 0002
Create Date: 2026-11-25 05:00:32.313002
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.alter_column(
        "steps",
        "status",
        existing_type=sa.VARCHAR(length=16),
        type_=sa.String(length=32),
        existing_nullable=False,
        existing_server_default=sa.text("'pending'::character varying"),
    )
    op.alter_column(
        "tasks",
        "status",
        existing_type=sa.VARCHAR(length=16),
        type_=sa.String(length=32),
        existing_nullable=False,
        existing_server_default=sa.text("'queued'::character varying"),
    )
    op.add_column(
        "tasks",
        sa.Column(
            "approval",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'\"never\"'::jsonb"),
            nullable=False,
        ),
    )
    op.add_column("tasks", sa.Column("deadline", sa.DateTime(timezone=True), nullable=True))
    op.create_index(
        "ix_tasks_deadline", "tasks", ["deadline"], unique=False, postgresql_where=sa.text("deadline IS NOT NULL")
    )


def downgrade() -> None:
    # rows in the new statuses do not fit the old columns: finish or cancel them before downgrading
    op.drop_index("ix_tasks_deadline", table_name="tasks", postgresql_where=sa.text("deadline IS NOT NULL"))
    op.drop_column("tasks", "deadline")
    op.drop_column("tasks", "approval")
    op.alter_column(
        "tasks",
        "status",
        existing_type=sa.String(length=32),
        type_=sa.VARCHAR(length=16),
        existing_nullable=False,
        existing_server_default=sa.text("'queued'::character varying"),
    )
    op.alter_column(
        "steps",
        "status",
        existing_type=sa.String(length=32),
        type_=sa.VARCHAR(length=16),
        existing_nullable=False,
        existing_server_default=sa.text("'pending'::character varying"),
    )
