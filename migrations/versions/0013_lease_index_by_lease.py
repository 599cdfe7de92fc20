"""The lease index covers rows holding a lease, not rows of a running status.

With ``WHERE status IN ('PROCESSING', 'ABORTING')`` the planner used it for
any statement naming those statuses — the worker's outcome batch, heartbeat,
abort check and release, which find their rows by id — and scanned every
entry it held: each claim adds one that stays, pointing at a dead row
version, until vacuum (12 ms a batch of outcomes after 40,000 jobs, growing
with every job). ``WHERE lease_expires_at IS NOT NULL`` covers the same live
rows (only a running job holds a lease), and only the reaper's
``lease_expires_at < now`` implies it: the others look their rows up by
primary key.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_HOLDING = sa.text("lease_expires_at IS NOT NULL")
_RUNNING = sa.text("status IN ('PROCESSING', 'ABORTING')")


def _lease_index(where: sa.TextClause) -> None:
    op.drop_index("ix_taskdb_jobs_lease", table_name="taskdb_jobs")
    op.create_index(
        "ix_taskdb_jobs_lease",
        "taskdb_jobs",
        ["lease_expires_at"],
        postgresql_where=where,
        sqlite_where=where,
    )


def upgrade() -> None:
    _lease_index(_HOLDING)


def downgrade() -> None:
    _lease_index(_RUNNING)
