"""What PostgreSQL does differently: its INSERT construct and batch row source."""

from __future__ import annotations

from typing import Any

from sqlalchemy import BigInteger, FromClause, Integer, Text, bindparam, column, func
from sqlalchemy.dialects.postgresql import JSONB, TIMESTAMP
from sqlalchemy.dialects.postgresql import insert as insert

_TYPES: dict[str, Any] = {
    "id": BigInteger(),
    "attempts": Integer(),
    "output": JSONB(none_as_null=True),
    "progress": Integer(),
    "run_after": TIMESTAMP(timezone=True),
    "completed_at": TIMESTAMP(timezone=True),
}


def batch_source(rows: list[dict[str, Any]], names: tuple[str, ...]) -> FromClause:
    """``rows`` as a derived table ``v`` (one bound JSON array: one round trip)."""
    encoded = [
        {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in row.items()}
        for row in rows
    ]
    cols = [column(name, _TYPES.get(name, Text())) for name in names]
    return (
        func.jsonb_to_recordset(bindparam("taskdb_batch", encoded, type_=JSONB))
        .table_valued(*cols)
        .render_derived(name="v", with_types=True)
    )


def advisory_lock_sql() -> str:
    return "SELECT pg_advisory_xact_lock(hashtext(:key))"


__all__ = ["advisory_lock_sql", "batch_source", "insert"]
