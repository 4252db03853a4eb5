"""drop the webhook delivery trigger's ``NOTIFY`` (0007)

A transaction that sends a ``NOTIFY`` takes, at commit, a lock that serializes the commits of every notifying
transaction of the instance (PostgreSQL's ``PreCommit_Notify``). With the trigger, that was every step commit of a
task subscribed to step events. The dispatcher now decides when to look without notifications
(``autogpt_workers/wake.py``).

Revision ID: 0008_drop_webhook_notify
Revises: 0007_webhook_notify
Create Date: 2026-12-05 14:00:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0008_drop_webhook_notify"
down_revision: str | None = "0007_webhook_notify"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS webhook_deliveries_notify ON webhook_deliveries")
    op.execute("DROP FUNCTION IF EXISTS autogpt_notify_webhook()")


def downgrade() -> None:
    op.execute(
        """
        CREATE OR REPLACE FUNCTION autogpt_notify_webhook() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('autogpt_webhooks', '');
            RETURN NULL;
        END
        $$
        """
    )
    op.execute(
        "CREATE TRIGGER webhook_deliveries_notify AFTER INSERT ON webhook_deliveries "
        "FOR EACH ROW EXECUTE FUNCTION autogpt_notify_webhook()"
    )
