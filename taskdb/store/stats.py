"""Operator statistics over a taskdb database: what ``taskdb stats`` shows.

Read-only; one consistent snapshot per call (a single read transaction).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict
from sqlalchemy import ColumnElement, func, select

from taskdb.core.jobs import JobStatus
from taskdb.store.database import Database
from taskdb.store.errors import reconnecting
from taskdb.store.schema import blobs, jobs, queues

THROUGHPUT_WINDOW_SECONDS = 60.0


class QueueStats(BaseModel):
    """One queue: job counts by status, its lag and its recent throughput."""

    model_config = ConfigDict(frozen=True)

    queue: str
    counts: dict[str, int]
    """Jobs per status (statuses with no job are left out)."""
    oldest_pending_seconds: float | None
    """How long the oldest job ready to run (``PENDING``, ``run_after`` passed) has
    waited since it became runnable; ``None`` when no job is ready."""
    completed_last_minute: int
    """Jobs of the queue that completed in the last 60 seconds."""
    paused: bool = False
    """No worker claims from the queue (``taskdb queue pause``)."""


class BlobTotals(BaseModel):
    """The blob store: committed blobs and the bytes they hold, and writes in flight."""

    model_config = ConfigDict(frozen=True)

    count: int
    bytes: int
    writing: int


class DatabaseStats(BaseModel):
    model_config = ConfigDict(frozen=True)

    at: datetime
    queues: list[QueueStats]
    blobs: BlobTotals


@reconnecting
async def collect_stats(db: Database, now: datetime | None = None) -> DatabaseStats:
    """Per-queue counts, lag and throughput, and blob totals, as of ``now``."""
    now = datetime.now(UTC) if now is None else now
    counts = select(jobs.c.queue, jobs.c.status, func.count()).group_by(jobs.c.queue, jobs.c.status)
    ready = (
        select(jobs.c.queue, func.min(jobs.c.run_after))
        .where(jobs.c.status == JobStatus.PENDING.value, jobs.c.run_after <= now)
        .group_by(jobs.c.queue)
    )
    recent = (
        select(jobs.c.queue, func.count())
        .where(
            jobs.c.completed_at >= now - timedelta(seconds=THROUGHPUT_WINDOW_SECONDS),
            jobs.c.status == JobStatus.COMPLETED.value,
        )
        .group_by(jobs.c.queue)
    )
    stored = select(
        func.count().filter(blobs.c.state == "committed"),
        func.coalesce(func.sum(blobs.c.size).filter(blobs.c.state == "committed"), 0),
        func.count().filter(blobs.c.state == "writing"),
    )
    async with db.transaction(write=False) as conn:
        by_status: list[Any] = list((await conn.execute(counts)).all())
        oldest: dict[str, datetime] = {r[0]: r[1] for r in (await conn.execute(ready)).all()}
        done: dict[str, int] = {r[0]: int(r[1]) for r in (await conn.execute(recent)).all()}
        blob_row: Any = (await conn.execute(stored)).one()
        paused: set[str] = set(await conn.scalars(select(queues.c.name).where(queues.c.paused)))
    per_queue: dict[str, dict[str, int]] = {}
    for queue, status, n in by_status:
        per_queue.setdefault(queue, {})[status] = int(n)
    for queue in paused:
        per_queue.setdefault(queue, {})  # a paused queue shows, jobs or not
    return DatabaseStats(
        at=now,
        queues=[
            QueueStats(
                queue=queue,
                counts=per_queue[queue],
                oldest_pending_seconds=(
                    max(0.0, (now - oldest[queue]).total_seconds()) if queue in oldest else None
                ),
                completed_last_minute=done.get(queue, 0),
                paused=queue in paused,
            )
            for queue in sorted(per_queue)
        ],
        blobs=BlobTotals(count=int(blob_row[0]), bytes=int(blob_row[1]), writing=int(blob_row[2])),
    )


class Throughput(BaseModel):
    """Jobs that ended in each minute of a window: ``minutes[i]`` starts ``i`` minutes
    after ``start``; the last one is the minute in progress."""

    model_config = ConfigDict(frozen=True)

    start: datetime
    minutes: list[datetime]
    completed: list[int]
    failed: list[int]


_ENDED = (JobStatus.COMPLETED.value, JobStatus.FAILED.value)


def _minute(db: Database, column: Any) -> ColumnElement[Any]:
    """``column`` truncated to its minute, as the dialect stores it."""
    if db.dialect == "postgresql":
        return func.date_trunc("minute", column)
    return func.substr(column, 1, 16)  # SQLite: 'YYYY-MM-DD HH:MM' of the stored text


@reconnecting
async def collect_throughput(db: Database, now: datetime, minutes: int = 60) -> Throughput:
    """Jobs completed and failed per minute over the last ``minutes`` minutes (an index
    range over ``completed_at``: the window's rows only)."""
    end = now.astimezone(UTC).replace(second=0, microsecond=0)
    start = end - timedelta(minutes=minutes - 1)
    bucket = _minute(db, jobs.c.completed_at)
    stmt = (
        select(bucket, jobs.c.status, func.count())
        .where(jobs.c.completed_at.is_not(None), jobs.c.completed_at >= start)
        .group_by(bucket, jobs.c.status)
    )
    async with db.transaction(write=False, atomic=False) as conn:
        rows = (await conn.execute(stmt)).all()
    slots = [start + timedelta(minutes=i) for i in range(minutes)]
    index = {_minute_key(at): i for i, at in enumerate(slots)}
    completed, failed = [0] * minutes, [0] * minutes
    for row in rows:
        at, status, n = row[0], row[1], int(row[2])
        i = index.get(_minute_key(at))
        if i is not None and status in _ENDED:
            (completed if status == JobStatus.COMPLETED.value else failed)[i] += n
    return Throughput(start=start, minutes=slots, completed=completed, failed=failed)


def _minute_key(value: datetime | str) -> str:
    """A minute as ``YYYY-MM-DD HH:MM`` in UTC, from a datetime or SQLite's text."""
    if isinstance(value, str):
        return value[:16].replace("T", " ")
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M")
