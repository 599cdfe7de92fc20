"""In-process signals between clients and servers that share a Database.

Same-process waiters wake as soon as a server records an outcome, and idle
servers wake as soon as a client of the same process submits; other
processes poll, and on PostgreSQL wake on NOTIFY (:mod:`taskdb.store.notify`).
Nothing here is durable.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections import defaultdict
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any, Protocol

from taskdb.store.database import Database

ProgressListener = Callable[[datetime, float, str | None, Any], None]
StreamCallback = Callable[[object], object]
"""Receives each event a job's handler emits (``JobHandle.on_stream``)."""
Unsubscribe = Callable[[], None]


class StreamSource(Protocol):
    """Where a job's same-process stream events come from: a server a client is attached to."""

    def add_stream_listener(self, job_id: int, callback: StreamCallback) -> Unsubscribe:
        """Call ``callback`` with each event job ``job_id`` emits, until unsubscribed."""
        ...


class LocalHub:
    def __init__(self) -> None:
        self._job_waiters: defaultdict[int, set[asyncio.Event]] = defaultdict(set)
        self._queue_waiters: defaultdict[str, set[asyncio.Event]] = defaultdict(set)
        self._progress: defaultdict[int, list[ProgressListener]] = defaultdict(list)

    def watch_job(self, job_id: int, event: asyncio.Event) -> None:
        self._job_waiters[job_id].add(event)

    def unwatch_job(self, job_id: int, event: asyncio.Event) -> None:
        waiters = self._job_waiters.get(job_id)
        if waiters is not None:
            waiters.discard(event)
            if not waiters:
                del self._job_waiters[job_id]

    def job_changed(self, job_ids: Iterable[int]) -> None:
        for job_id in job_ids:
            for event in self._job_waiters.get(job_id, ()):
                event.set()

    def watch_queue(self, queue: str, event: asyncio.Event) -> None:
        self._queue_waiters[queue].add(event)

    def unwatch_queue(self, queue: str, event: asyncio.Event) -> None:
        self._queue_waiters[queue].discard(event)

    def queue_has_work(self, queue: str) -> None:
        for event in self._queue_waiters.get(queue, ()):
            event.set()

    def add_progress_listener(self, job_id: int, listener: ProgressListener) -> None:
        self._progress[job_id].append(listener)

    def remove_progress_listener(self, job_id: int, listener: ProgressListener) -> None:
        listeners = self._progress.get(job_id)
        if listeners and listener in listeners:
            listeners.remove(listener)
            if not listeners:
                del self._progress[job_id]

    def progress(
        self, job_id: int, at: datetime, progress: float, message: str | None, details: Any
    ) -> None:
        for listener in list(self._progress.get(job_id, ())):
            listener(at, progress, message, details)


async def sleep_until(event: asyncio.Event, seconds: float | None) -> None:
    """Sleep until ``event`` is set or ``seconds`` passed (``None``: no limit).

    ``asyncio.timeout``, not ``wait_for``: on Python 3.11 ``wait_for`` can swallow
    a cancellation that arrives as the event is set, and the caller never stops.
    """
    if event.is_set():
        return
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await event.wait()


_hubs: weakref.WeakKeyDictionary[Database, LocalHub] = weakref.WeakKeyDictionary()


def hub_for(db: Database) -> LocalHub:
    hub = _hubs.get(db)
    if hub is None:
        hub = _hubs[db] = LocalHub()
    return hub
