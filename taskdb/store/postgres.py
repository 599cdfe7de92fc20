"""What PostgreSQL does differently: its INSERT construct, row sources, locks."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    FromClause,
    Integer,
    Text,
    any_,
    bindparam,
    cast,
    column,
    func,
    literal_column,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, TIMESTAMP
from sqlalchemy.dialects.postgresql import insert as insert

from taskdb.store.database import dumps

# Changed rows and their change records can be written in one statement.
DML_CTES = True
JSON_NULL: ColumnElement[Any] = literal_column("'null'::jsonb")

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


def json_param(name: str) -> ColumnElement[Any]:
    """A bind parameter that takes JSON *text* (already encoded), read as jsonb."""
    return cast(bindparam(name, type_=Text()), JSONB)


def batch_source(names: Sequence[str], param: str = "batch") -> FromClause:
    """A derived table ``v`` with columns ``names``, read from one JSON array bound
    as ``param`` (see :func:`encode_batch`): a whole batch in one parameter."""
    cols = [column(name, _TYPES.get(name, Text())) for name in names]
    return (
        func.jsonb_to_recordset(json_param(param))
        .table_valued(*cols)
        .render_derived(name="v", with_types=True)
    )


def encode_batch(rows: Sequence[dict[str, Any]]) -> str:
    """Rows as one JSON array (datetimes as ISO text; a batch shares most of them)."""
    iso: dict[datetime, str] = {}

    def encode(value: Any) -> Any:
        if isinstance(value, datetime):
            text = iso.get(value)
            if text is None:
                text = iso[value] = value.isoformat()
            return text
        return value

    return dumps([{k: encode(v) for k, v in row.items()} for row in rows])


def embed_json(text: str) -> str:
    """A JSON value's text as it is written into a batch: as is (read as jsonb)."""
    return text


def id_in(col: ColumnElement[Any], param: str = "ids") -> ColumnElement[bool]:
    """``col`` is one of the ids bound as ``param`` (one array, whatever the count)."""
    return col == any_(bindparam(param, type_=ARRAY(BigInteger)))


def encode_ids(ids: Sequence[int]) -> list[int]:
    return list(ids)


def advisory_lock_sql() -> str:
    return "SELECT pg_advisory_xact_lock(hashtext(:key))"


__all__ = [
    "DML_CTES",
    "JSON_NULL",
    "advisory_lock_sql",
    "batch_source",
    "embed_json",
    "encode_batch",
    "encode_ids",
    "id_in",
    "insert",
    "json_param",
]
