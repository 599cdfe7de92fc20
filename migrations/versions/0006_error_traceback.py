"""The traceback of a job's last failure, kept on its row.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


# Plain ADD/DROP COLUMN on both dialects (see 0004): no batch copy of taskdb_jobs.


def upgrade() -> None:
    op.add_column("taskdb_jobs", sa.Column("error_traceback", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("taskdb_jobs", "error_traceback")
