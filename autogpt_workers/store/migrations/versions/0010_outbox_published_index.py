"""an index of the published wake-ups by when they were published (``ix_outbox_published``)

The outbox kept one row per wake-up ever written, a row per step run. The reaper now deletes the old published
wake-ups of closed steps and finished tasks (``Ledger.prune_outbox``, ``AUTOGPT_OUTBOX_RETENTION_S``); this index
lets its round read only the rows published before the cutoff, oldest first, instead of walking the table. A wake-up
enters it once, when it is first marked published (that update was never HOT: ``published_at`` is in the predicate of
``ix_outbox_unpublished`` already).

Built in the migration's transaction (the migrator holds an advisory lock for the whole run): on a large ``outbox``
the build blocks writes to it for about a second per million rows. To avoid that, create it beforehand with
``CREATE INDEX CONCURRENTLY ix_outbox_published ON outbox (published_at) WHERE published_at IS NOT NULL``; this
migration then leaves it in place.

Revision ID: 0010_outbox_published_index
Revises: 0009_tasks_unfinished_index
Create Date: 2026-12-06 10:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010_outbox_published_index"
down_revision: str | None = "0009_tasks_unfinished_index"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_outbox_published", "outbox", ["published_at"], unique=False,
        postgresql_where=sa.text("published_at IS NOT NULL"), if_not_exists=True,
    )  # fmt: skip


def downgrade() -> None:
    op.drop_index("ix_outbox_published", table_name="outbox", if_exists=True)
