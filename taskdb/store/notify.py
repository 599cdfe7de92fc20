"""PostgreSQL change notifications: one LISTEN connection shared by a process's waiters.

Every transaction that writes change records notifies channel ``taskdb_changes``
(a trigger of migration 0003): once per queue, payload ``+queue`` when work
became runnable (submitted, retried, requeued, released), else ``.queue``.

A :class:`Listener` holds a dedicated psycopg connection (never one of the
pool's: a connection that waits for notifications cannot also run queries)
and sets the :class:`asyncio.Event`\\ s watching a queue. It listens only while
something watches (and ``linger`` seconds after): PostgreSQL wakes every
listening backend on every notification, so a busy worker that never waits
should not listen. Notifications only shorten waits: every waiter still polls
at its interval, so nothing is lost while the connection is down (it
reconnects with backoff; an outage is logged once, by the database's
:class:`~taskdb.store.errors.OutageLog`) or when NOTIFY does not arrive at all
(PgBouncer in transaction mode). Each time LISTEN begins every watcher is woken once, to
read what committed while nobody listened.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable

import psycopg
from psycopg.rows import TupleRow

from taskdb.store.errors import OutageLog, is_outage

log = logging.getLogger("taskdb.notify")

CHANNEL = "taskdb_changes"
WORK = "+"  # payload prefix: the statement made work runnable in that queue

Connect = Callable[[], Awaitable[psycopg.AsyncConnection[TupleRow]]]
Describe = Callable[[BaseException], BaseException]

_HEALTH_CHECK_SECONDS = 30.0  # a silent connection is pinged this often (half-open TCP)
_TICK = 1.0  # seconds between looks at the watchers while listening


class Listener:
    """Fans notifications out to the events watching each queue (one event loop).

    ``connect`` opens the dedicated connection; ``describe`` turns a driver error
    into taskdb's (what is logged); ``outages`` notes the failures that are an
    outage, and logs them once. Started by the first :meth:`watch`; stopped by
    :meth:`aclose`.
    """

    def __init__(
        self,
        connect: Connect,
        describe: Describe,
        outages: OutageLog | None = None,
        *,
        min_backoff: float = 0.1,
        max_backoff: float = 5.0,
        linger: float = 5.0,
    ) -> None:
        self._connect = connect
        self._describe = describe
        self._outages = outages
        self._min_backoff = min_backoff
        self._max_backoff = max_backoff
        self._linger = linger
        self._changes: defaultdict[str, set[asyncio.Event]] = defaultdict(set)
        self._work: defaultdict[str, set[asyncio.Event]] = defaultdict(set)
        self._task: asyncio.Task[None] | None = None
        self._wanted = asyncio.Event()  # something watches
        self._listening = asyncio.Event()
        self.backend_pid: int | None = None
        """The server process of the LISTEN connection (``None`` while disconnected)."""

    def watch(self, queue: str, event: asyncio.Event, *, work: bool = False) -> None:
        """Set ``event`` on every change of ``queue`` (``work=True``: only when work
        became runnable there)."""
        (self._work if work else self._changes)[queue].add(event)
        self._wanted.set()
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._run())

    def unwatch(self, queue: str, event: asyncio.Event, *, work: bool = False) -> None:
        waiters = self._work if work else self._changes
        events = waiters.get(queue)
        if events is not None:
            events.discard(event)
            if not events:
                del waiters[queue]
        if not (self._changes or self._work):
            self._wanted.clear()

    async def listening(self) -> None:
        """Return once LISTEN is in effect (tests; waits never depend on it)."""
        await self._listening.wait()

    async def aclose(self) -> None:
        """Stop listening and close the connection."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # -- the connection ----------------------------------------------------------------

    async def _run(self) -> None:
        backoff = self._min_backoff
        while True:
            await self._wanted.wait()
            try:
                conn = await self._connect()
                async with conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    if self._outages is not None:
                        self._outages.up()
                    self.backend_pid = conn.info.backend_pid
                    self._listening.set()
                    backoff = self._min_backoff
                    self._wake_all()
                    await self._receive(conn)
            except (psycopg.Error, OSError) as exc:
                err = self._describe(exc)
                if self._outages is not None and is_outage(err):
                    self._outages.failed(err)
                    self._outages.announce(err)  # logged once per outage
                else:
                    log.warning("LISTEN: %s; retrying in %.1fs", err, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self._max_backoff)
            finally:
                self.backend_pid = None
                self._listening.clear()

    async def _receive(self, conn: psycopg.AsyncConnection[TupleRow]) -> None:
        """Dispatch notifications until nothing watched for ``linger`` seconds."""
        loop = asyncio.get_running_loop()
        pinged = loop.time()
        unwanted_since: float | None = None
        while True:
            async for note in conn.notifies(timeout=_TICK):
                self._dispatch(note.payload)
            now = loop.time()
            if self._wanted.is_set():
                unwanted_since = None
            elif unwanted_since is None:
                unwanted_since = now
            elif now - unwanted_since >= self._linger:
                return
            if now - pinged >= _HEALTH_CHECK_SECONDS:
                await conn.execute("SELECT 1")
                pinged = now

    def _dispatch(self, payload: str) -> None:
        flag, queue = payload[:1], payload[1:]
        if flag not in (WORK, "."):  # not ours in form: wake the whole queue
            flag, queue = WORK, payload
        for event in self._changes.get(queue, ()):
            event.set()
        if flag == WORK:
            for event in self._work.get(queue, ()):
                event.set()

    def _wake_all(self) -> None:
        for waiters in (self._changes, self._work):
            for events in waiters.values():
                for event in events:
                    event.set()
