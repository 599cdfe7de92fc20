"""What SQLite does differently: its INSERT construct and batch row source."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, ColumnElement, FromClause, func, literal, select
from sqlalchemy.dialects.sqlite import insert as insert

from taskdb.store.database import dumps
from taskdb.store.schema import SQLITE_TIME_FORMAT

_JSON_COLUMNS = frozenset({"input", "output"})


def _encode(name: str, value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime(SQLITE_TIME_FORMAT)
    if name in _JSON_COLUMNS and value is not None:
        # json_extract returns nested JSON as text but a JSON string unquoted:
        # pre-encoding keeps every output stored as its JSON text.
        return dumps(value)
    return value


def batch_source(rows: list[dict[str, Any]], names: tuple[str, ...]) -> FromClause:
    """``rows`` as a derived table ``v`` (one bound JSON array: one statement)."""
    encoded = [{k: _encode(k, v) for k, v in row.items()} for row in rows]
    each = func.json_each(literal(encoded, JSON)).table_valued("value")
    return select(
        *(func.json_extract(each.c.value, f"$.{name}").label(name) for name in names)
    ).subquery("v")


def id_in(col: ColumnElement[Any], ids: Sequence[int]) -> ColumnElement[bool]:
    """``col`` is one of ``ids`` (one JSON parameter, whatever the count)."""
    each = func.json_each(literal(list(ids), JSON)).table_valued("value")
    return col.in_(select(each.c.value))


def advisory_lock_sql() -> None:
    """SQLite needs no lock beyond BEGIN IMMEDIATE: one writer at a time."""
    return None


__all__ = ["advisory_lock_sql", "batch_source", "id_in", "insert"]
