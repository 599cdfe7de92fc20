"""Change feed on PostgreSQL: the writing transaction's id on every change, and NOTIFY.

``xid`` (``xid8``, the top-level transaction id) lets a reader split the feed
into batches of what committed between two of its snapshots, so a change
whose ``seq`` was taken early but committed late is never skipped (see
:mod:`taskdb.store.feed`). A statement-level trigger notifies channel
``taskdb_changes`` once per queue per transaction; the payload is ``+queue``
when the statement made work runnable (submitted, retried, requeued,
released), else ``.queue``. SQLite has one writer at a time, so ``seq`` order
is commit order there: nothing changes.

Adding ``xid`` rewrites ``taskdb_job_changes`` under an exclusive lock
(existing rows get the migration's transaction id).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NOTIFY_FUNCTION = """
CREATE FUNCTION taskdb_notify_changes() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- one small notification per queue (identical ones are merged per transaction)
    PERFORM pg_notify(
        'taskdb_changes',
        CASE WHEN bool_or(kind IN ('submitted', 'retried', 'requeued', 'released'))
             THEN '+' ELSE '.' END || queue
    )
    FROM taskdb_new_changes
    GROUP BY queue;
    RETURN NULL;
END
$$
"""

NOTIFY_TRIGGER = """
CREATE TRIGGER taskdb_job_changes_notify
AFTER INSERT ON taskdb_job_changes
REFERENCING NEW TABLE AS taskdb_new_changes
FOR EACH STATEMENT EXECUTE FUNCTION taskdb_notify_changes()
"""


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(
        "ALTER TABLE taskdb_job_changes ADD COLUMN xid xid8 NOT NULL DEFAULT pg_current_xact_id()"
    )
    op.create_index("ix_taskdb_job_changes_xid", "taskdb_job_changes", ["xid"])
    op.execute(NOTIFY_FUNCTION)
    op.execute(NOTIFY_TRIGGER)


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP TRIGGER taskdb_job_changes_notify ON taskdb_job_changes")
    op.execute("DROP FUNCTION taskdb_notify_changes()")
    op.drop_index("ix_taskdb_job_changes_xid", table_name="taskdb_job_changes")
    op.drop_column("taskdb_job_changes", "xid")
