"""Statement pieces of the change feed that both dialects share (pure).

A page of the feed is one SELECT: the read's ``head`` (its snapshot, or the
newest ``seq``) joined to up to ``feed_limit`` change rows, so an empty page
is one row of NULL changes that still carries the head. Each dialect decides
which rows follow a cursor (:class:`taskdb.store.dialect.FeedCursors`).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, Select, bindparam, select, true

from taskdb.store.schema import job_changes as c

FIELDS = (c.c.seq, c.c.job_id, c.c.queue, c.c.kind, c.c.status, c.c.attempts, c.c.progress, c.c.at)
"""The columns of a change a page reads."""

SEQ_AFTER = c.c.seq > bindparam("feed_seq")


def seq_of(after: object) -> int | None:
    """The ``seq`` a cursor names when it is one (an int, or its decimal text)."""
    if isinstance(after, int) and not isinstance(after, bool) and after >= 0:
        return after
    if isinstance(after, str) and after.isascii() and after.isdigit():
        return int(after)
    return None


def filtered(query: Select[Any], by_queue: bool, by_job: bool) -> Select[Any]:
    """``query`` over changes restricted to ``feed_queue`` / ``feed_job`` (when
    asked), in ``seq`` order, at most ``feed_limit`` rows."""
    if by_queue:
        query = query.where(c.c.queue == bindparam("feed_queue"))
    if by_job:
        query = query.where(c.c.job_id == bindparam("feed_job"))
    return query.order_by(c.c.seq).limit(bindparam("feed_limit"))


def page_of(head: ColumnElement[Any], rows: Any) -> Select[Any]:
    """The page statement: ``head`` on every row, then the change ``rows`` (a
    subquery of :data:`FIELDS` and ``old``: true for the older of two batches)."""
    heads = select(head.label("head")).subquery("h")
    return (
        select(heads.c.head, rows)
        .select_from(heads.outerjoin(rows, true()))
        .order_by(rows.c.old.desc(), rows.c.seq)
        .limit(bindparam("feed_limit"))
    )


def page_values(
    queue: str | None, job_id: int | None, limit: int, **position: Any
) -> dict[str, Any]:
    """The values of a page statement: its filters, its limit and the position's own."""
    values: dict[str, Any] = {"feed_limit": limit, **position}
    if queue is not None:
        values["feed_queue"] = queue
    if job_id is not None:
        values["feed_job"] = job_id
    return values
