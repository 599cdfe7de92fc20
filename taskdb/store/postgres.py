"""What PostgreSQL does differently: its INSERT construct and batch row source."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    FromClause,
    Integer,
    Text,
    any_,
    column,
    func,
    literal,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, TIMESTAMP
from sqlalchemy.dialects.postgresql import insert as insert

_TYPES: dict[str, Any] = {
    "id": BigInteger(),
    "attempts": Integer(),
    "output": JSONB(none_as_null=True),
    "ord": Integer(),
    "input": JSONB(none_as_null=True),
    "max_retries": Integer(),
    "priority": Integer(),
    "run_after": TIMESTAMP(timezone=True),
    "deadline": TIMESTAMP(timezone=True),
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
        func.jsonb_to_recordset(literal(encoded, JSONB))
        .table_valued(*cols)
        .render_derived(name="v", with_types=True)
    )


def id_in(col: ColumnElement[Any], ids: Sequence[int]) -> ColumnElement[bool]:
    """``col`` is one of ``ids`` (one array parameter, whatever the count)."""
    return col == any_(literal(list(ids), ARRAY(BigInteger)))


def advisory_lock_sql() -> str:
    return "SELECT pg_advisory_xact_lock(hashtext(:key))"


__all__ = ["advisory_lock_sql", "batch_source", "id_in", "insert"]
