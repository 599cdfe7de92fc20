"""SQLite: JSON columns are declared TEXT, so a bare number comes back as given.

SQLite gives a column declared ``JSON`` NUMERIC affinity: the document ``1.0``
was stored as the integer 1 and ``9223372036854775808`` as a float, so a job
whose whole input or output was a bare number did not round-trip exactly.
Declared ``TEXT``, the column keeps the document's text as written. SQLite
cannot change a column's type in place: each table is rebuilt (rows, indexes
and the job id sequence kept). Values stored before keep what the old affinity
made of them. PostgreSQL's JSONB is exact: nothing to do there.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-04
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_JSON_COLUMNS = {
    "taskdb_jobs": ("input", "output", "progress_details", "trace_context"),
    "taskdb_task_outputs": ("output",),
    "taskdb_job_streams": ("event",),
}


def upgrade() -> None:
    _retype("JSON", "TEXT")


def downgrade() -> None:
    _retype("TEXT", "JSON")


def _retype(old: str, new: str) -> None:
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        return
    for table, columns in _JSON_COLUMNS.items():
        create = bind.exec_driver_sql(
            "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)
        ).scalar_one()
        pattern = rf"(\s)({'|'.join(columns)}) {old}\b"
        rebuilt, count = re.subn(pattern, rf"\1\2 {new}", create)
        if count == 0:
            continue  # already rebuilt
        if count != len(columns):
            raise RuntimeError(f"unexpected {table} definition, not migrated: {create}")
        rebuilt, named = re.subn(
            rf'^CREATE TABLE "?{table}"? \(', f"CREATE TABLE {table}_new (", rebuilt
        )
        if named != 1:
            raise RuntimeError(f"unexpected {table} definition, not migrated: {create}")
        indexes = list(
            bind.exec_driver_sql(
                "SELECT sql FROM sqlite_master WHERE type = 'index' AND tbl_name = ? "
                "AND sql IS NOT NULL",
                (table,),
            ).scalars()
        )
        # dropping the table drops its AUTOINCREMENT counter: keep it (purged ids stay used)
        sequence = (
            bind.exec_driver_sql(
                "SELECT seq FROM sqlite_sequence WHERE name = ?", (table,)
            ).scalar_one_or_none()
            if "AUTOINCREMENT" in create.upper()
            else None
        )
        bind.exec_driver_sql(rebuilt)
        bind.exec_driver_sql(f"INSERT INTO {table}_new SELECT * FROM {table}")
        bind.exec_driver_sql(f"DROP TABLE {table}")
        bind.exec_driver_sql(f"ALTER TABLE {table}_new RENAME TO {table}")
        for sql in indexes:
            bind.exec_driver_sql(sql)
        if sequence is not None:
            bind.exec_driver_sql(
                "DELETE FROM sqlite_sequence WHERE name IN (?, ?)", (table, f"{table}_new")
            )
            bind.exec_driver_sql(
                "INSERT INTO sqlite_sequence (name, seq) VALUES "
                f"(?, max(?, coalesce((SELECT max(id) FROM {table}), 0)))",
                (table, sequence),
            )
