"""The dashboard: a registry of running workers, and an index for per-queue counts
and filtered job lists.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "taskdb_workers",
        sa.Column("worker_id", sa.String(100), nullable=False),
        sa.Column("queue", sa.String(200), nullable=False),
        sa.Column("hostname", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("slots", sa.Integer(), nullable=False),
        sa.Column("lease_seconds", sa.Float(), nullable=False),
        sa.Column("started_at", TS, nullable=False),
        sa.Column("heartbeat_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("worker_id", "queue", name="pk_taskdb_workers"),
    )
    op.create_index("ix_taskdb_jobs_queue_status", "taskdb_jobs", ["queue", "status"])


def downgrade() -> None:
    op.drop_index("ix_taskdb_jobs_queue_status", table_name="taskdb_jobs")
    op.drop_table("taskdb_workers")
