"""The worker side of a durable stream: events buffered and appended in order.

``add`` queues an event (a direct call: the handler's ``emit_stream_event``
stays synchronous) and returns an awaitable that completes once the buffer
is below its high-water mark: a handler that awaits it is slowed to the
database's pace, so a long binary stream never piles up in memory. One
background task appends batches in order; ``close`` flushes what is left.
A database outage only delays the appends: a batch whose transaction certainly
rolled back is appended again once the database is back (meanwhile the buffer
fills and the handler waits); the run is cancelled if its lease is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections import deque
from functools import partial

from taskdb.core.jobs import Job, JobStatus
from taskdb.errors import LeaseLost, job_error_from_row
from taskdb.store.errors import outlast
from taskdb.store.streams import StreamStore
from taskdb.streams.events import BinaryDelta, Finish, StreamError, StreamEvent

HIGH_WATER_BYTES = 8 * 1024 * 1024
HIGH_WATER_EVENTS = 1024
BATCH_EVENTS = 256
_OUTAGE_PAUSE = 0.2  # seconds between appends while the database is away


def closing_event(job: Job) -> StreamEvent:
    """The last event of an ended job's stream, read off its row: ``Finish`` with
    the stored output, or the stored error as a ``StreamError``."""
    if job.status is JobStatus.COMPLETED:
        return Finish({"output": job.output})
    return StreamError(job_error_from_row(job.error_code, job.error))


class DurableStreamWriter:
    """Appends one run's stream events to its job's durable stream."""

    def __init__(self, store: StreamStore, job_id: int, attempt: int, worker_id: str) -> None:
        self._store = store
        self._job = (job_id, attempt, worker_id)
        self._offset = -1  # the stream's end, read when the first batch is written
        self._pending: deque[StreamEvent] = deque()
        self._bytes = 0
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._closing = False
        self.error: BaseException | None = None
        self._task = asyncio.ensure_future(self._run())

    def add(self, event: StreamEvent) -> asyncio.Event:
        """Queue ``event``; the returned event is set while there is room
        (``await ctx.emit_stream_event(e).wait()`` applies backpressure)."""
        if self.error is not None:
            raise self.error
        self._pending.append(event)
        if isinstance(event, BinaryDelta):
            self._bytes += len(event.chunk)
        if self._bytes >= HIGH_WATER_BYTES or len(self._pending) >= HIGH_WATER_EVENTS:
            self._room.clear()
        self._wake.set()
        return self._room

    async def close(self) -> None:
        """Append everything queued; raises what stopped the appends, if anything."""
        self._closing = True
        self._wake.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(self._task)
        if self.error is not None:
            raise self.error

    def abandon(self) -> None:
        self._task.cancel()

    async def _run(self) -> None:
        job_id, attempt, worker_id = self._job
        try:
            while True:
                if not self._pending:
                    if self._closing:
                        return
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                if self._offset < 0:
                    next_offset = partial(self._store.next_offset, job_id)
                    self._offset = await outlast(next_offset, _OUTAGE_PAUSE)
                batch = list(itertools.islice(self._pending, BATCH_EVENTS))
                append = partial(self._store.append, job_id, attempt, worker_id, self._offset)
                if not await outlast(partial(append, batch), _OUTAGE_PAUSE, write=True):
                    raise LeaseLost(f"job {job_id}: lost before its stream was stored")
                for _ in batch:
                    event = self._pending.popleft()
                    if isinstance(event, BinaryDelta):
                        self._bytes -= len(event.chunk)
                self._offset += len(batch)
                if self._bytes < HIGH_WATER_BYTES and len(self._pending) < HIGH_WATER_EVENTS:
                    self._room.set()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            self.error = exc
            self._room.set()  # never leave a handler waiting on a dead writer
