"""an index of the finished tasks by when they finished (``ix_tasks_finished``)

The reaper deletes the tasks that finished more than ``AUTOGPT_TASK_RETENTION_DAYS`` ago, with their steps, events and
files (``Ledger.prune_finished_tasks``); this index lets its round read only those, oldest first, instead of walking
every task ever run. A task enters it once, when it finishes (that update was never HOT: ``status`` is in
``ix_tasks_status_created`` already).

Built in the migration's transaction (the migrator holds an advisory lock for the whole run): on a large ``tasks``
the build blocks writes to it for about a second per million rows. To avoid that, create it beforehand with
``CREATE INDEX CONCURRENTLY ix_tasks_finished ON tasks (finished_at) WHERE status IN ('completed', 'failed',
'cancelled')``; this migration then leaves it in place.

Revision ID: 0011_tasks_finished_index
Revises: 0010_outbox_published_index
Create Date: 2026-12-06 14:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011_tasks_finished_index"
down_revision: str | None = "0010_outbox_published_index"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_tasks_finished", "tasks", ["finished_at"], unique=False,
        postgresql_where=sa.text("status IN ('completed', 'failed', 'cancelled')"), if_not_exists=True,
    )  # fmt: skip


def downgrade() -> None:
    op.drop_index("ix_tasks_finished", table_name="tasks", if_exists=True)
