"""Durable job streams: the ordered stream events of a job, stored as rows.

A job submitted with ``durable_stream=True`` gets one row per stream event
at offsets 0, 1, 2, ... (no gaps). Text, object, snapshot and phase events
are stored as their JSON; a binary delta keeps its bytes in the ``chunk``
column, so a reader fetches a bounded batch of rows at a time and never the
whole stream. Appends by the job's worker are fenced like every other write
of a run (job id, attempt, worker id): a worker that lost the job cannot
write into its stream.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, func, insert, select

from taskdb.core.jobs import RUNNING_STATUSES
from taskdb.store.database import Database
from taskdb.store.errors import reconnecting
from taskdb.store.schema import job_streams, jobs
from taskdb.streams.events import BinaryDelta, StreamEvent, event_from_json, event_to_json

TERMINAL_TYPES = frozenset({"finish", "error"})


@dataclass(frozen=True, slots=True)
class StoredEvent:
    offset: int
    attempt: int
    event: StreamEvent


def encode_event(event: StreamEvent) -> tuple[dict[str, Any], bytes | None]:
    """An event as (row JSON, chunk): binary bytes go to the chunk column."""
    if isinstance(event, BinaryDelta):
        return {"type": event.type, "port": event.port}, event.chunk
    return event_to_json(event), None


def decode_event(data: dict[str, Any], chunk: bytes | None) -> StreamEvent:
    if data.get("type") == BinaryDelta.type:
        return BinaryDelta(str(data.get("port")), bytes(chunk or b""))
    return event_from_json(data)


class StreamStore:
    """Appends to and reads the durable job streams of one :class:`Database`."""

    def __init__(self, db: Database) -> None:
        self.db = db

    @reconnecting
    async def next_offset(self, job_id: int) -> int:
        async with self.db.transaction(write=False, atomic=False) as conn:
            last = await conn.scalar(
                select(func.max(job_streams.c.offset)).where(job_streams.c.job_id == job_id)
            )
        return 0 if last is None else int(last) + 1

    @reconnecting
    async def append(
        self,
        job_id: int,
        attempt: int,
        worker_id: str,
        offset: int,
        events: Sequence[StreamEvent],
    ) -> bool:
        """Store ``events`` at ``offset``, ``offset + 1``, ...; False (nothing
        stored) when this worker no longer runs this attempt of the job."""
        # FOR SHARE (PostgreSQL; SQLite has one writer): a reclaim of the job waits
        # for this insert, or this check waits for the reclaim and sees it.
        owned = (
            select(jobs.c.id)
            .where(
                jobs.c.id == job_id,
                jobs.c.attempts == attempt,
                jobs.c.worker_id == worker_id,
                jobs.c.status.in_(RUNNING_STATUSES),
            )
            .with_for_update(read=True)
        )
        async with self.db.transaction() as conn:
            if await conn.scalar(owned) is None:
                return False
            await conn.execute(insert(job_streams), self._rows(job_id, attempt, offset, events))
        return True

    @reconnecting
    async def append_terminal(self, job_id: int, attempt: int, event: StreamEvent) -> None:
        """Close the stream of an ended job with ``event`` (a Finish or an error),
        unless it is already closed."""
        async with self.db.transaction() as conn:
            last = (
                await conn.execute(
                    select(job_streams.c.offset, job_streams.c.event)
                    .where(job_streams.c.job_id == job_id)
                    .order_by(job_streams.c.offset.desc())
                    .limit(1)
                )
            ).first()
            if last is not None and last.event.get("type") in TERMINAL_TYPES:
                return
            offset = 0 if last is None else last.offset + 1
            await conn.execute(insert(job_streams), self._rows(job_id, attempt, offset, [event]))

    @reconnecting
    async def read(self, job_id: int, from_offset: int, limit: int) -> list[StoredEvent]:
        """Up to ``limit`` events from ``from_offset`` on, in order."""
        stmt = (
            select(
                job_streams.c.offset,
                job_streams.c.attempt,
                job_streams.c.event,
                job_streams.c.chunk,
            )
            .where(and_(job_streams.c.job_id == job_id, job_streams.c.offset >= from_offset))
            .order_by(job_streams.c.offset)
            .limit(limit)
        )
        async with self.db.transaction(write=False, atomic=False) as conn:
            rows = (await conn.execute(stmt)).all()
        return [StoredEvent(r.offset, r.attempt, decode_event(r.event, r.chunk)) for r in rows]

    @staticmethod
    def _rows(
        job_id: int, attempt: int, offset: int, events: Sequence[StreamEvent]
    ) -> list[dict[str, Any]]:
        rows = []
        for position, event in enumerate(events):
            data, chunk = encode_event(event)
            rows.append(
                {
                    "job_id": job_id,
                    "offset": offset + position,
                    "attempt": attempt,
                    "event": data,
                    "chunk": chunk,
                }
            )
        return rows
