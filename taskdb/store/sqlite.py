"""What SQLite does differently: its INSERT construct, row sources, locks."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    ColumnElement,
    FromClause,
    Text,
    bindparam,
    func,
    literal_column,
    select,
)
from sqlalchemy.dialects.sqlite import insert as insert

from taskdb.store.database import dumps
from taskdb.store.schema import SQLITE_TIME_FORMAT

# SQLite has no data-modifying CTEs: a change record is a second statement.
DML_CTES = False
JSON_NULL: ColumnElement[Any] = literal_column("'null'")


def _encode(name: str, value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime(SQLITE_TIME_FORMAT)
    if name == "output" and value is not None:
        # json_extract returns nested JSON as text but a JSON string unquoted:
        # pre-encoding keeps every value stored as its JSON text (as embed_json).
        return dumps(value)
    return value


def json_param(name: str) -> ColumnElement[Any]:
    """A bind parameter that takes JSON *text* (already encoded), stored as is."""
    return bindparam(name, type_=Text())


def batch_source(names: Sequence[str], param: str = "batch") -> FromClause:
    """A derived table ``v`` with columns ``names``, read from one JSON array bound
    as ``param`` (see :func:`encode_batch`): a whole batch in one parameter."""
    each = func.json_each(json_param(param)).table_valued("value")
    return select(
        *(func.json_extract(each.c.value, f"$.{name}").label(name) for name in names)
    ).subquery("v")


def encode_batch(rows: Sequence[dict[str, Any]]) -> str:
    return dumps([{k: _encode(k, v) for k, v in row.items()} for row in rows])


def embed_json(text: str) -> str:
    """A JSON value's text as it is written into a batch: as a JSON string, which
    ``json_extract`` gives back as the text itself (see :func:`_encode`)."""
    return dumps(text)


def id_in(col: ColumnElement[Any], param: str = "ids") -> ColumnElement[bool]:
    """``col`` is one of the ids bound as ``param`` (one JSON array, whatever the count)."""
    each = func.json_each(bindparam(param, type_=JSON)).table_valued("value")
    return col.in_(select(each.c.value))


def encode_ids(ids: Sequence[int]) -> list[int]:
    return list(ids)


def advisory_lock_sql() -> None:
    """SQLite needs no lock beyond BEGIN IMMEDIATE: one writer at a time."""
    return None


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
