"""Task output cache and the blob store (blobs, SQLite chunk rows, links to holders).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
JSON = sa.JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "taskdb_task_outputs",
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column("namespace", sa.String(200), nullable=False, server_default=sa.text("''")),
        sa.Column("task_type", sa.String(200), nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("output", JSON, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_taskdb_task_outputs"),
    )
    op.create_index(
        "ux_taskdb_task_outputs_key",
        "taskdb_task_outputs",
        ["namespace", "task_type", "fingerprint"],
        unique=True,
    )
    op.create_index("ix_taskdb_task_outputs_created_at", "taskdb_task_outputs", ["created_at"])

    op.create_table(
        "taskdb_blobs",
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("state", sa.String(12), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False, server_default=sa.text("0")),
        sa.Column("mime", sa.String(200), nullable=True),
        sa.Column("oid", sa.BigInteger(), nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.Column("committed_at", TS, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_taskdb_blobs"),
    )
    op.create_index("ux_taskdb_blobs_key", "taskdb_blobs", ["key"], unique=True)
    op.create_index("ix_taskdb_blobs_state_updated_at", "taskdb_blobs", ["state", "updated_at"])

    op.create_table(
        "taskdb_blob_chunks",
        sa.Column("blob_id", ID, nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("blob_id", "seq", name="pk_taskdb_blob_chunks"),
    )

    op.create_table(
        "taskdb_blob_links",
        sa.Column("blob_key", sa.String(64), nullable=False),
        sa.Column("holder", sa.String(100), nullable=False),
        sa.PrimaryKeyConstraint("blob_key", "holder", name="pk_taskdb_blob_links"),
    )
    op.create_index("ix_taskdb_blob_links_holder", "taskdb_blob_links", ["holder"])


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        # large objects do not cascade: unlink them before their rows go
        op.execute("SELECT lo_unlink(oid) FROM taskdb_blobs WHERE oid IS NOT NULL")
    op.drop_table("taskdb_blob_links")
    op.drop_table("taskdb_blob_chunks")
    op.drop_table("taskdb_blobs")
    op.drop_table("taskdb_task_outputs")
