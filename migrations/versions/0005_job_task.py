"""Typed tasks: the name of the task a job runs, so one queue carries many tasks.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


# Plain ADD/DROP COLUMN on both dialects (see 0004): no batch copy of taskdb_jobs.


def upgrade() -> None:
    op.add_column("taskdb_jobs", sa.Column("task", sa.String(200), nullable=True))


def downgrade() -> None:
    op.drop_column("taskdb_jobs", "task")
