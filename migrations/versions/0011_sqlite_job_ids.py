"""SQLite: job ids are never handed out twice (AUTOINCREMENT).

Without it SQLite gives a new row max(id)+1, so purging the newest jobs let the
next job take a purged job's id, and its change-feed history (``taskdb watch
--job``, ``follow``, the dashboard) showed the old job's events. The table is
rebuilt with ``id INTEGER PRIMARY KEY AUTOINCREMENT`` (rows and indexes kept as
they are) and the sequence starts above every job id the feed and the streams
have seen. PostgreSQL's sequences never reuse an id: nothing to do there.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-04
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_PK_COLUMN = re.compile(r"\bid INTEGER NOT NULL,")
_PK_CONSTRAINT = re.compile(r",\s*CONSTRAINT pk_taskdb_jobs PRIMARY KEY \(id\)\s*\)\s*$")


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        return
    create = bind.exec_driver_sql(
        "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'taskdb_jobs'"
    ).scalar_one()
    if "AUTOINCREMENT" in create.upper():
        return
    indexes = list(
        bind.exec_driver_sql(
            "SELECT sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'taskdb_jobs' "
            "AND sql IS NOT NULL"
        ).scalars()
    )
    rebuilt, columns = _PK_COLUMN.subn(
        "id INTEGER NOT NULL CONSTRAINT pk_taskdb_jobs PRIMARY KEY AUTOINCREMENT,", create, 1
    )
    rebuilt, constraints = _PK_CONSTRAINT.subn("\n)", rebuilt)
    if (columns, constraints) != (1, 1):
        raise RuntimeError(f"unexpected taskdb_jobs definition, not migrated: {create}")
    rebuilt = rebuilt.replace("CREATE TABLE taskdb_jobs (", "CREATE TABLE taskdb_jobs_new (", 1)
    bind.exec_driver_sql(rebuilt)
    bind.exec_driver_sql("INSERT INTO taskdb_jobs_new SELECT * FROM taskdb_jobs")
    bind.exec_driver_sql("DROP TABLE taskdb_jobs")
    bind.exec_driver_sql("ALTER TABLE taskdb_jobs_new RENAME TO taskdb_jobs")
    for sql in indexes:
        bind.exec_driver_sql(sql)
    bind.exec_driver_sql("DELETE FROM sqlite_sequence WHERE name = 'taskdb_jobs'")
    bind.exec_driver_sql(
        "INSERT INTO sqlite_sequence (name, seq) SELECT 'taskdb_jobs', max("
        "coalesce((SELECT max(id) FROM taskdb_jobs), 0), "
        "coalesce((SELECT max(job_id) FROM taskdb_job_changes), 0), "
        "coalesce((SELECT max(job_id) FROM taskdb_job_streams), 0))"
    )


def downgrade() -> None:
    """Nothing to undo: ids that are never reused are still valid ids."""
