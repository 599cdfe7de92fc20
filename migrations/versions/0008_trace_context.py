"""The W3C trace context of the submit that wrote a job (OpenTelemetry, optional).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")


# Plain ADD/DROP COLUMN on both dialects (see 0004): no batch copy of taskdb_jobs.


def upgrade() -> None:
    op.add_column("taskdb_jobs", sa.Column("trace_context", JSON, nullable=True))


def downgrade() -> None:
    op.drop_column("taskdb_jobs", "trace_context")
