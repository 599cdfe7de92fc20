"""The change feed: pages of ``taskdb_job_changes`` in a gap-free order, and their cursors.

A cursor is an opaque string (:attr:`JobChange.cursor`): reading after the
cursor of a change returns exactly the changes that follow it. Changes of one
job always come in the order they were made.

**SQLite** has one writer at a time, so ``seq`` order is commit order: the
cursor is the ``seq``.

**PostgreSQL** hands out ``seq`` values in one order and commits in another
(A takes 10, B takes 11 and commits first: a reader that moved past 11 never
sees 10). Each change row also holds its transaction id (``xid``) and a reader
takes the feed in batches, as PgQ does: a batch is what committed between two
snapshots of the reader (visible in the newer, not in the older), delivered in
``seq`` order. Every change falls in exactly one batch. Changes of one job
stay ordered: the later one was written after the earlier one committed (the
job's row lock), so it lies in the same batch or a later one, and it has the
larger ``seq``. The cursor is ``prev/target/seq``: everything visible in
snapshot ``prev`` was delivered, and of the batch up to snapshot ``target``,
the changes up to ``seq``. No transaction holds the feed back, but while a
transaction stays open each read scans the changes committed since it began
(rows with ``xid >= xmin`` of ``prev``).

An ``int`` cursor is a ``seq``: exact on SQLite; on PostgreSQL it means "the
changes after that ``seq`` visible now, then everything later" (``0``, the
whole feed, is exact).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

from sqlalchemy import (
    Boolean,
    ColumnElement,
    Select,
    Text,
    bindparam,
    cast,
    false,
    func,
    not_,
    select,
    true,
    union_all,
)
from sqlalchemy.types import UserDefinedType

from taskdb.errors import ConfigurationError
from taskdb.store.schema import job_changes as c

ChangeCursor = str
"""Where a reader of the change feed stands (opaque; see :mod:`taskdb.store.feed`)."""

FIELDS = (c.c.seq, c.c.job_id, c.c.queue, c.c.kind, c.c.status, c.c.attempts, c.c.progress, c.c.at)

_NOTHING = "1:1:"  # a snapshot in which no transaction is visible: the start of the feed
_SNAPSHOT = re.compile(r"\d+:\d+:(\d+(,\d+)*)?")


class _Snapshot(UserDefinedType[str]):
    cache_ok = True

    def get_col_spec(self, **kw: Any) -> str:
        return "pg_snapshot"


@dataclass(frozen=True, slots=True)
class PgCursor:
    """Changes visible in snapshot ``prev`` were delivered, and those of the batch up to
    ``target`` (``None``: the next read's own snapshot) up to ``seq``."""

    prev: str
    target: str | None
    seq: int

    def encode(self) -> ChangeCursor:
        return f"{self.prev}/{self.target or ''}/{self.seq}"


def parse(dialect: str, after: ChangeCursor | int) -> int | PgCursor:
    """A cursor as the dialect reads it; raises :class:`ConfigurationError` if malformed."""
    if isinstance(after, int) and not isinstance(after, bool) and after >= 0:
        seq: int | None = after
    elif isinstance(after, str) and after.isascii() and after.isdigit():
        seq = int(after)
    else:
        seq = None
    if seq is not None:
        return seq if dialect == "sqlite" else PgCursor(_NOTHING, None, seq)
    parts = after.split("/") if isinstance(after, str) else []
    if dialect == "postgresql" and len(parts) == 3:
        prev, target, seq_text = parts
        if (
            _SNAPSHOT.fullmatch(prev)
            and (target == "" or _SNAPSHOT.fullmatch(target))
            and seq_text.isascii()
            and seq_text.isdigit()
        ):
            return PgCursor(prev, target or None, int(seq_text))
    raise ConfigurationError(
        f"not a change-feed cursor of this {dialect} database: {after!r} "
        "(pass a JobChange.cursor, or a seq)"
    )


def head_statement(dialect: str) -> Select[Any]:
    """The cursor of "now": one value, see :func:`head_cursor`."""
    if dialect == "postgresql":
        return select(cast(func.pg_current_snapshot(), Text))
    return select(func.coalesce(func.max(c.c.seq), 0))


def head_cursor(dialect: str, value: Any) -> ChangeCursor:
    return PgCursor(str(value), None, 0).encode() if dialect == "postgresql" else str(value)


def page_query(
    dialect: str, cursor: int | PgCursor, queue: str | None, job_id: int | None, limit: int
) -> tuple[Select[Any], dict[str, Any]]:
    """The statement reading up to ``limit`` changes after ``cursor`` (of ``queue``, of
    job ``job_id`` when given) and its parameters; see :func:`cursors` for the rows."""
    params: dict[str, Any] = {"feed_limit": limit}
    targeted = False
    if isinstance(cursor, PgCursor):
        params.update(feed_prev=cursor.prev, feed_seq=cursor.seq)
        if cursor.target is not None:
            params["feed_target"] = cursor.target
            targeted = True
    else:
        params["feed_seq"] = cursor
    if queue is not None:
        params["feed_queue"] = queue
    if job_id is not None:
        params["feed_job"] = job_id
    return _page_statement(dialect, targeted, queue is not None, job_id is not None), params


@cache
def _page_statement(dialect: str, targeted: bool, by_queue: bool, by_job: bool) -> Select[Any]:
    """Up to ``feed_limit`` changes after the cursor, in feed order; every row also holds
    ``head`` (the read's snapshot, or the newest ``seq``) and is one row of NULL
    changes when there are none. ``targeted``: the cursor names a target snapshot."""

    def filtered(query: Select[Any]) -> Select[Any]:
        if by_queue:
            query = query.where(c.c.queue == bindparam("feed_queue"))
        if by_job:
            query = query.where(c.c.job_id == bindparam("feed_job"))
        return query.order_by(c.c.seq).limit(bindparam("feed_limit"))

    seq_after = c.c.seq > bindparam("feed_seq")
    if dialect == "sqlite":
        head: Any = func.coalesce(func.max(c.c.seq), 0)
        page = filtered(select(*FIELDS, true().label("old")).where(seq_after))
        rows = page.subquery("c")
    else:
        head = cast(func.pg_current_snapshot(), Text)
        prev = cast(bindparam("feed_prev", type_=Text), _Snapshot())
        target = cast(bindparam("feed_target", type_=Text), _Snapshot())

        def visible(snapshot: Any) -> ColumnElement[bool]:
            return func.pg_visible_in_snapshot(c.c.xid, snapshot, type_=Boolean)

        def after_snapshot(snapshot: Any) -> list[ColumnElement[bool]]:
            # The index range first: nothing below a snapshot's xmin is new to it.
            return [c.c.xid >= func.pg_snapshot_xmin(snapshot), not_(visible(snapshot))]

        # The rest of the batch being delivered ...
        rest = select(*FIELDS, true().label("old")).where(*after_snapshot(prev), seq_after)
        if not targeted:  # ... which ends at this read's own snapshot
            rows = filtered(rest).subquery("c")
        else:  # ... then the batch that committed since its target
            rest = filtered(rest.where(visible(target)))
            new = filtered(select(*FIELDS, false().label("old")).where(*after_snapshot(target)))
            rows = union_all(rest, new).subquery("c")
    heads = select(head.label("head")).subquery("h")
    return (
        select(heads.c.head, rows)
        .select_from(heads.outerjoin(rows, true()))
        .order_by(rows.c.old.desc(), rows.c.seq)
        .limit(bindparam("feed_limit"))
    )


def cursors(
    dialect: str, cursor: int | PgCursor, rows: Sequence[Any], limit: int
) -> tuple[list[tuple[Any, ChangeCursor]], ChangeCursor]:
    """The change rows read by :func:`page_query` after ``cursor``, each with its own
    cursor, and the cursor to read the next page from."""
    changes = [r for r in rows if r.seq is not None]
    head = rows[0].head if rows else None
    if isinstance(cursor, int):
        each = [(r, str(r.seq)) for r in changes]
        if len(changes) < limit:
            return each, str(max(cursor, int(head or 0)))
        return each, each[-1][1]
    now = str(head)
    target = cursor.target or now
    each = [
        (r, PgCursor(cursor.prev, target, r.seq).encode())
        if r.old
        else (r, PgCursor(target, now, r.seq).encode())
        for r in changes
    ]
    if len(changes) < limit:  # everything visible in this read's snapshot was read
        return each, PgCursor(now, None, 0).encode()
    return each, each[-1][1]
