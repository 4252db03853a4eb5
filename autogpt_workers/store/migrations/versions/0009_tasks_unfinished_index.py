"""an index of the unfinished tasks (``ix_tasks_unfinished``)

The dispatcher's admission round (running tasks per tenant), its priority refresh (every 5 s), the reaper's deadline
round, and every metrics scrape (tasks by status, the stuck detector) ask for the tasks not yet completed, failed or
cancelled. The only indexes that could answer held every task ever run, so each of those reads grew with the history:
at 500k finished tasks, 48 ms for one tenant's running count, 36 ms for the priority refresh, 22 ms for the status
count. The partial index holds the unfinished tasks only. The tasks' updates on a step's path (its counters) touch
none of its columns, so they stay HOT.

Built in the migration's transaction (the migrator holds an advisory lock for the whole run): on a large ``tasks``
table the build blocks writes to it for about a second per million rows. To avoid that, create it beforehand with
``CREATE INDEX CONCURRENTLY ix_tasks_unfinished ON tasks (tenant_id, status) WHERE status NOT IN ('completed',
'failed', 'cancelled')``; this migration then leaves it in place.

Revision ID: 0009_tasks_unfinished_index
Revises: 0008_drop_webhook_notify
Create Date: 2026-12-05 23:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009_tasks_unfinished_index"
down_revision: str | None = "0008_drop_webhook_notify"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UNFINISHED = "status NOT IN ('completed', 'failed', 'cancelled')"


def upgrade() -> None:
    op.create_index(
        "ix_tasks_unfinished", "tasks", ["tenant_id", "status"], unique=False,
        postgresql_where=sa.text(UNFINISHED), if_not_exists=True,
    )  # fmt: skip


def downgrade() -> None:
    op.drop_index("ix_tasks_unfinished", table_name="tasks", if_exists=True)
