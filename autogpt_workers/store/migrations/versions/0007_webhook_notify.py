"""webhook deliveries notify the dispatcher: ``NOTIFY autogpt_webhooks`` from a trigger (dropped again by 0008)

The dispatcher's webhook loop then looks in the database only when a delivery may be due (see
``autogpt_workers/wake.py``), instead of a transaction every ``dispatcher_interval_s`` on an idle platform.
A trigger on ``webhook_deliveries`` catches every writer: the ``task_events`` trigger (0003) and a new task's own
options (``record_options``). PostgreSQL folds identical notifications of one transaction into one, and sends them
at commit.

Revision ID: 0007_webhook_notify
Revises: 0006_merge
Create Date: 2026-12-05 14:00:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0007_webhook_notify"
down_revision: str | None = "0006_merge"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
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


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS webhook_deliveries_notify ON webhook_deliveries")
    op.execute("DROP FUNCTION IF EXISTS autogpt_notify_webhook()")
