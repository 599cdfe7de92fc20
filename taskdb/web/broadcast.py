"""One change-feed poller per dashboard, fanned out to every connected browser.

A :class:`Broadcaster` follows the feed (:meth:`taskdb.Admin.watch`) while at
least one subscriber is connected, so N browsers cost one feed read per poll
interval, not N. A subscriber resuming from a cursor (SSE ``Last-Event-ID``)
is attached first, then reads the feed after its cursor itself, up to now, and
then takes the live changes, skipping those (by ``seq``) its own reads already
returned: nothing is missed, nothing repeated. (The live changes it may have
read itself are the newest of its reads: it remembers the last 20,000.)

A subscriber too slow to take its changes (its queue is full) is dropped; its
browser reconnects with the cursor of the last change it got, and catches up.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator

from taskdb.admin import Admin
from taskdb.core.jobs import ChangeCursor, JobChange
from taskdb.queue.changes import StopFollowing
from taskdb.store.feed import ChangeFeed

_CATCH_UP_PAGE = 500
_SEEN = 20_000  # seqs of a catch-up remembered to skip them among the live changes


class _Subscriber:
    __slots__ = ("dropped", "queue")

    def __init__(self, size: int) -> None:
        self.queue: asyncio.Queue[JobChange] = asyncio.Queue(size)
        self.dropped = False


class Broadcaster:
    """Fans the change feed out to subscribers (see the module docstring)."""

    def __init__(
        self,
        admin: Admin,
        *,
        poll_interval: float = 0.5,
        queue_size: int = 10_000,
    ) -> None:
        self.admin = admin
        self.poll_interval = poll_interval
        self._queue_size = queue_size
        self._subscribers: set[_Subscriber] = set()
        self._stop: StopFollowing | None = None
        self._lock = asyncio.Lock()

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    def _publish(self, change: JobChange) -> None:
        for sub in list(self._subscribers):
            try:
                sub.queue.put_nowait(change)
            except asyncio.QueueFull:
                sub.dropped = True
                self._subscribers.discard(sub)

    async def _attach(self, sub: _Subscriber) -> None:
        async with self._lock:
            self._subscribers.add(sub)
            if self._stop is None:
                self._stop = await self.admin.watch(self._publish, poll_interval=self.poll_interval)

    async def _detach(self, sub: _Subscriber) -> None:
        async with self._lock:
            self._subscribers.discard(sub)
            if not self._subscribers and self._stop is not None:
                stop, self._stop = self._stop, None
                await stop()

    async def aclose(self) -> None:
        """Stop following the feed (subscribers still connected get nothing more)."""
        async with self._lock:
            self._subscribers.clear()
            if self._stop is not None:
                stop, self._stop = self._stop, None
                await stop()

    def check(self, after: ChangeCursor | None) -> None:
        """:class:`~taskdb.ConfigurationError` unless ``after`` is ``None`` or a cursor."""
        if after is not None:
            ChangeFeed(self.admin.db).check(after)

    async def changes(
        self,
        after: ChangeCursor | None = None,
        *,
        queue: str | None = None,
        job_id: int | None = None,
    ) -> AsyncIterator[JobChange]:
        """The changes (of ``queue``, of job ``job_id``) after the cursor ``after``
        (``None``: from now on), live, until the consumer stops iterating or is
        dropped for being too slow. A bad cursor raises
        :class:`~taskdb.ConfigurationError` before anything is yielded."""

        def wanted(change: JobChange) -> bool:
            return (queue is None or change.queue == queue) and (
                job_id is None or change.job_id == job_id
            )

        feed = ChangeFeed(self.admin.db)
        if after is not None:
            feed.check(after)
        sub = _Subscriber(self._queue_size)
        await self._attach(sub)  # from here on every change published reaches sub.queue
        try:
            seen: deque[int] = deque(maxlen=_SEEN)
            cursor = after
            while cursor is not None:  # catch up on what committed before (or while) attaching
                page = await feed.page(cursor, queue=queue, job_id=job_id, limit=_CATCH_UP_PAGE)
                for change in page.changes:
                    seen.append(change.seq)
                    yield change
                cursor = page.cursor if page.full else None
            skip = set(seen)
            while not sub.dropped or not sub.queue.empty():
                change = await sub.queue.get()
                if wanted(change) and change.seq not in skip:
                    yield change
        finally:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._detach(sub))
