"""SQLite indexes every job's input digest, so a job's outcome does not touch it.

``output_for_input`` looks up the newest COMPLETED job of a queue with a given
input digest. Partial on ``status = 'COMPLETED'``, the index gained its entry
when a job completed: digests are hashes, so a worker's batch of 32 outcomes
dirtied about 32 random pages of it, which SQLite writes out at each commit
(about a quarter of a worker's cost per job). Covering every job, the entry is
written once, by the submit (batched there), and a status change never
touches it; the lookup walks a digest's entries newest first and stops at the
first completed job. PostgreSQL keeps the partial index: there every status
change is a new row version that a full index would get a new entry for.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_COMPLETED = sa.text("status = 'COMPLETED'")


def _digest_index(where: sa.TextClause | None) -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    op.drop_index("ix_taskdb_jobs_input_digest", table_name="taskdb_jobs")
    op.create_index(
        "ix_taskdb_jobs_input_digest",
        "taskdb_jobs",
        ["queue", "input_digest"],
        sqlite_where=where,
    )


def upgrade() -> None:
    _digest_index(None)


def downgrade() -> None:
    _digest_index(_COMPLETED)
