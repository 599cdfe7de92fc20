"""Durable job streams: the ``durable_stream`` flag and the stream event rows.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
JSON = sa.JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")


# Plain ADD/DROP COLUMN on both dialects (SQLite >= 3.35), never a batch table
# copy: recreating taskdb_jobs on SQLite would lose the claim index's DESC order.


def upgrade() -> None:
    op.add_column(
        "taskdb_jobs",
        sa.Column("durable_stream", sa.Boolean(), nullable=False, server_default=sa.false()),
    )
    op.create_table(
        "taskdb_job_streams",
        sa.Column("job_id", ID, nullable=False),
        sa.Column("offset", sa.Integer(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("event", JSON, nullable=False),
        sa.Column("chunk", sa.LargeBinary(), nullable=True),
        sa.PrimaryKeyConstraint("job_id", "offset", name="pk_taskdb_job_streams"),
    )


def downgrade() -> None:
    op.drop_table("taskdb_job_streams")
    op.drop_column("taskdb_jobs", "durable_stream")
