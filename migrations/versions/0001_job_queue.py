"""Job queue: jobs, the change feed and rate-limit hits.

Revision ID: 0001
Revises:
Create Date: 2026-11-27
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
JSON = sa.JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "taskdb_jobs",
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column("queue", sa.String(200), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("input", JSON, nullable=False),
        sa.Column("input_digest", sa.String(64), nullable=False),
        sa.Column("output", JSON, nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("error_code", sa.String(200), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("max_retries", sa.Integer(), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("run_after", TS, nullable=False),
        sa.Column("deadline", TS, nullable=True),
        sa.Column("progress", sa.Float(), nullable=False, server_default=sa.text("0")),
        sa.Column("progress_message", sa.Text(), nullable=True),
        sa.Column("progress_details", JSON, nullable=True),
        sa.Column("fingerprint", sa.String(200), nullable=True),
        sa.Column("job_run_id", sa.String(200), nullable=True),
        sa.Column("worker_id", sa.String(100), nullable=True),
        sa.Column("lease_expires_at", TS, nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.Column("completed_at", TS, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_taskdb_jobs"),
    )
    pending = sa.text("status = 'PENDING'")
    active_fp = sa.text(
        "status IN ('PENDING', 'PROCESSING', 'ABORTING') AND fingerprint IS NOT NULL"
    )
    running = sa.text("status IN ('PROCESSING', 'ABORTING')")
    op.create_index(
        "ix_taskdb_jobs_claim",
        "taskdb_jobs",
        ["queue", sa.text("priority DESC"), "run_after", "id"],
        postgresql_where=pending,
        sqlite_where=pending,
    )
    op.create_index(
        "ux_taskdb_jobs_fingerprint",
        "taskdb_jobs",
        ["queue", "fingerprint"],
        unique=True,
        postgresql_where=active_fp,
        sqlite_where=active_fp,
    )
    op.create_index(
        "ix_taskdb_jobs_lease",
        "taskdb_jobs",
        ["lease_expires_at"],
        postgresql_where=running,
        sqlite_where=running,
    )
    # Status changes are never HOT updates: secondary indexes are partial so a
    # transition only adds entries where a query needs them.
    completed = sa.text("status = 'COMPLETED'")
    has_run = sa.text("job_run_id IS NOT NULL")
    ended = sa.text("completed_at IS NOT NULL")
    op.create_index(
        "ix_taskdb_jobs_input_digest",
        "taskdb_jobs",
        ["queue", "input_digest"],
        postgresql_where=completed,
        sqlite_where=completed,
    )
    op.create_index(
        "ix_taskdb_jobs_run_id",
        "taskdb_jobs",
        ["job_run_id"],
        postgresql_where=has_run,
        sqlite_where=has_run,
    )
    op.create_index(
        "ix_taskdb_jobs_completed",
        "taskdb_jobs",
        ["completed_at"],
        postgresql_where=ended,
        sqlite_where=ended,
    )

    op.create_table(
        "taskdb_job_changes",
        sa.Column("seq", ID, primary_key=True, autoincrement=True),
        sa.Column("job_id", ID, nullable=False),
        sa.Column("queue", sa.String(200), nullable=False),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("progress", sa.Float(), nullable=True),
        sa.Column("at", TS, nullable=False),
        sa.PrimaryKeyConstraint("seq", name="pk_taskdb_job_changes"),
    )
    op.create_index("ix_taskdb_job_changes_job", "taskdb_job_changes", ["job_id", "seq"])

    op.create_table(
        "taskdb_rate_limit_hits",
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column("queue", sa.String(200), nullable=False),
        sa.Column("at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_taskdb_rate_limit_hits"),
    )
    op.create_index("ix_taskdb_rate_limit_hits_queue_at", "taskdb_rate_limit_hits", ["queue", "at"])


def downgrade() -> None:
    op.drop_table("taskdb_rate_limit_hits")
    op.drop_table("taskdb_job_changes")
    op.drop_table("taskdb_jobs")
