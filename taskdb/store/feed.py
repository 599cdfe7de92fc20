"""The change feed: ``taskdb_job_changes`` read page by page in a gap-free order.

Every transaction that changes jobs appends one change row per job in that
same transaction. A reader holds a cursor, an opaque string
(:attr:`~taskdb.JobChange.cursor`): reading after the cursor of a change
returns exactly the changes that follow it, each once, and the changes of one
job in the order they were made. How a cursor stays exact is the dialect's
(:class:`~taskdb.store.dialect.FeedCursors`): on SQLite, one writer at a time
makes ``seq`` order commit order; PostgreSQL reads in snapshot batches (see
:mod:`taskdb.store.postgres`).

An ``int`` cursor is a ``seq``: ``0`` is the start of the feed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, func, select

from taskdb.core.jobs import ChangeCursor, JobChange
from taskdb.store.database import Database
from taskdb.store.errors import reconnecting
from taskdb.store.params import params
from taskdb.store.rows import model
from taskdb.store.schema import job_changes

TRIM_BATCH = 5000
"""Changes a trim deletes per transaction (oldest first)."""


@dataclass(frozen=True, slots=True)
class ChangePage:
    """Changes read from the feed, the cursor to read on from, and whether the page was
    full (more may follow at once)."""

    changes: list[JobChange]
    cursor: ChangeCursor
    full: bool


class ChangeFeed:
    """Reads the change feed of one :class:`Database`."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._cursors = db.backend.feed

    @reconnecting
    async def head(self) -> ChangeCursor:
        """The cursor of "now": reading after it returns what commits later."""
        async with self.db.transaction(write=False, atomic=False) as conn:
            value = await conn.scalar(self._cursors.head())
        return self._cursors.head_cursor(value)

    def check(self, after: ChangeCursor | int) -> None:
        """Raise :class:`~taskdb.ConfigurationError` unless ``after`` is a cursor of
        this feed."""
        self._cursors.parse(after)

    async def changes(
        self,
        after: ChangeCursor | int = 0,
        *,
        queue: str | None = None,
        job_id: int | None = None,
        limit: int = 1000,
    ) -> list[JobChange]:
        """Up to ``limit`` changes after the cursor ``after`` (of ``queue``, of job
        ``job_id`` when given), in feed order."""
        return (await self.page(after, queue=queue, job_id=job_id, limit=limit)).changes

    @reconnecting
    async def page(
        self,
        after: ChangeCursor | int = 0,
        *,
        queue: str | None = None,
        job_id: int | None = None,
        limit: int = 1000,
    ) -> ChangePage:
        """:meth:`changes`, with the cursor to read the next page from (past the last
        change returned, or past everything this read could see when the page is short)."""
        position = self._cursors.parse(after)
        stmt, values = self._cursors.page(position, queue, job_id, limit)
        async with self.db.transaction(write=False, atomic=False) as conn:
            rows = (await conn.execute(stmt, values)).all()
        read, following = self._cursors.cursors(position, rows, limit)
        changes = [model(JobChange, row, cursor=at) for row, at in read]
        return ChangePage(changes, following, full=len(changes) >= limit)

    async def trim(self, before: datetime) -> int:
        """Delete the changes recorded before ``before``, oldest first, a batch per
        transaction; returns how many went. It stops at the first change it keeps, and
        never deletes the newest change: SQLite would hand its ``seq`` out again,
        under a reader's cursor."""
        trimmed = 0
        while True:
            count, more = await self._trim_batch(before)
            trimmed += count
            if not more:
                return trimmed

    @reconnecting
    async def _trim_batch(self, before: datetime) -> tuple[int, bool]:
        oldest = select(job_changes.c.seq, job_changes.c.at).order_by(job_changes.c.seq)
        async with self.db.transaction() as conn:
            newest = await conn.scalar(select(func.max(job_changes.c.seq)))
            rows = (await conn.execute(oldest.limit(TRIM_BATCH))).all()
            doomed = []
            for row in rows:
                if row.at >= before or row.seq == newest:
                    break
                doomed.append(row.seq)
            if doomed:
                # by seq, not "seq <= last": on PostgreSQL a change with a lower seq may
                # commit after this read, and no reader has seen it yet
                await conn.execute(
                    delete(job_changes).where(self.db.backend.id_in(job_changes.c.seq)),
                    params(ids=doomed),
                )
        return len(doomed), len(doomed) == TRIM_BATCH
