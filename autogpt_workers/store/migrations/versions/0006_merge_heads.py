"""merge the two branches that grew from 0002 (0003 API gateway, 0004→0005 lifecycle and trace context)

No schema change: it gives the history one head again, so ``alembic upgrade head`` works as well as ``heads``.
A database already at both heads only records this revision.

Revision ID: 0006_merge
Revises: 0003, 0005_traceparent
Create Date: 2026-12-05 08:00:00.000000
"""

from collections.abc import Sequence

revision: str = "0006_merge"
down_revision: str | Sequence[str] | None = ("0003", "0005_traceparent")
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
