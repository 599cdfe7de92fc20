"""Following the change feed from any process: what ``subscribe_to_changes``, the
admin ``watch`` and the CLI share.

A follower reads the feed (:class:`~taskdb.store.feed.ChangeFeed`) after its
cursor, hands each change to a callback in feed order, each once, and keeps
the cursor of the last change handled. It reads again at once when a page was
full, when PostgreSQL notifies a change of the followed queue, and every
``poll_interval`` otherwise; a database outage only delays it (the cursor
stays where it was).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from taskdb.core.jobs import ChangeCursor, JobChange
from taskdb.errors import TaskdbError
from taskdb.queue.local import sleep_until
from taskdb.store.database import Database
from taskdb.store.errors import retry_level
from taskdb.store.feed import ChangeFeed

log = logging.getLogger("taskdb.changes")

ChangeCallback = Callable[[JobChange], object]
"""Receives each change; a plain or an async function."""
StopFollowing = Callable[[], Awaitable[None]]
"""Stops a follower at once (no callback runs after the call); awaiting its result
waits until the follower has let go of its connection."""


async def call(callback: Callable[..., object], *args: Any) -> None:
    """Call a plain or an async callback."""
    result = callback(*args)
    if inspect.isawaitable(result):
        await result


def settled(task: asyncio.Future[None]) -> asyncio.Future[None]:
    """A future done once ``task`` has finished, whatever its outcome (it never
    raises, and leaving it unawaited is fine)."""
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def finish(_: object) -> None:
        if not done.done():
            done.set_result(None)

    task.add_done_callback(finish)
    return done


async def follow_changes(
    db: Database,
    callback: ChangeCallback,
    *,
    queue: str | None = None,
    job_id: int | None = None,
    after: ChangeCursor | int | None = None,
    poll_interval: float = 0.5,
) -> StopFollowing:
    """Call ``callback`` with each change (of ``queue``, of job ``job_id`` when given)
    after the cursor ``after`` (``0``: the start of the feed; ``None``: what commits
    after this returns), in feed order, each once, until the returned function is
    called. A bad cursor raises :class:`~taskdb.ConfigurationError` here; a callback
    that raises is logged and the follower goes on."""
    feed = ChangeFeed(db)
    cursor = await feed.head() if after is None else after
    feed.check(cursor)
    woken = asyncio.Event()
    listener = db.listener() if queue is not None else None
    if listener is not None and queue is not None:
        listener.watch(queue, woken)
    where = "every queue" if queue is None else f"queue {queue!r}"
    stopped = False

    async def run() -> None:
        nonlocal cursor
        while not stopped:
            woken.clear()
            try:
                page = await feed.page(cursor, queue=queue, job_id=job_id)
            except TaskdbError as exc:  # the database is away: keep the cursor, retry
                log.log(retry_level(exc), "change feed of %s: %s; retrying", where, exc)
                await asyncio.sleep(poll_interval)
                continue
            for change in page.changes:
                if stopped:
                    return
                cursor = change.cursor
                try:
                    await call(callback, change)
                except Exception:
                    log.exception("change callback raised")
            cursor = page.cursor
            if not page.full:
                await sleep_until(woken, poll_interval)

    task = asyncio.ensure_future(run())

    def stop() -> Awaitable[None]:
        nonlocal stopped
        stopped = True
        task.cancel()
        if listener is not None and queue is not None:
            listener.unwatch(queue, woken)
        return settled(task)

    return stop
