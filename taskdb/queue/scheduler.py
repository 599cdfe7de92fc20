"""The scheduler: enqueues the jobs of periodic schedules, one per tick.

Every scheduler registers its schedules (an upsert) when it starts, then
wakes at each schedule's next tick and enqueues the due ones
(:func:`~taskdb.core.schedules.due_ticks`) through
:class:`~taskdb.store.schedules.ScheduleStore`, whose transaction makes a tick
one job however many schedulers run. Run it in every worker (``taskdb
worker`` does), alone (``taskdb scheduler``), or in your own process. The
clock and the sleep are injectable: tests drive hundreds of ticks without
waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta

from taskdb.core.clock import Clock, utcnow
from taskdb.core.schedules import GRACE, Schedule, due_ticks
from taskdb.errors import InvalidSchedule, TaskdbError
from taskdb.store.database import Database
from taskdb.store.errors import retry_level
from taskdb.store.schedules import ScheduleStore

log = logging.getLogger("taskdb.scheduler")

REFRESH = timedelta(seconds=60)
"""How often a scheduler says it still has its schedules (and re-reads pause states
of schedules that tick less often)."""
MAX_BACKOFF = 30.0
"""The longest wait between two tries while the database is unreachable."""
_LATE = 0.005  # wake a little after a tick: clocks of processes differ by a little


class Scheduler:
    """Enqueues one job per tick of each of ``schedules`` (see the module docstring).

    ``clock`` gives the time (aware UTC); ``sleep``, if given, replaces the wait
    between passes (a test's fast clock). ``grace``: how late a tick still counts as
    on time (see :data:`~taskdb.core.schedules.GRACE`).
    """

    def __init__(
        self,
        db: Database,
        schedules: Sequence[Schedule],
        *,
        clock: Clock = utcnow,
        sleep: Callable[[float], Awaitable[None]] | None = None,
        grace: timedelta = GRACE,
    ) -> None:
        names = [s.name for s in schedules]
        if len(set(names)) != len(names):
            twice = sorted({n for n in names if names.count(n) > 1})
            raise InvalidSchedule(f"schedules defined twice: {', '.join(twice)}")
        self.db = db
        self.schedules = list(schedules)
        self._store = ScheduleStore(db)
        self._clock = clock
        self._sleep = sleep
        self.grace = grace
        self._stop = asyncio.Event()
        self._touched: datetime | None = None
        self.enqueued = 0
        """Jobs this scheduler enqueued so far."""

    def __repr__(self) -> str:
        return f"Scheduler({self.db!r}, {len(self.schedules)} schedule(s))"

    async def register(self) -> None:
        """Upsert the schedules (what :meth:`run` does first)."""
        now = self._clock()
        await self._store.register(self.schedules, now)
        self._touched = now

    async def run_once(self, now: datetime | None = None) -> list[int]:
        """One pass at ``now`` (default: the clock): enqueue every due tick of every
        schedule not paused; returns the ids of the jobs this pass enqueued (ticks
        another scheduler enqueued first are not among them)."""
        now = self._clock() if now is None else now
        if self._touched is None or now - self._touched >= REFRESH:
            await self.register()  # also brings back a schedule an operator deleted
        states = await self._store.states([s.name for s in self.schedules])
        enqueued: list[int] = []
        for schedule in self.schedules:
            row = states.get(schedule.name)
            if row is None:
                self._touched = None  # deleted meanwhile: registered again next pass
                continue
            if row.paused:
                continue
            since = row.not_before if row.last_tick is None else max(row.not_before, row.last_tick)
            ticks = due_ticks(
                schedule.cadence, since, now, schedule.catch_up, schedule.max_catch_up, self.grace
            )
            for tick in ticks:
                job_id = await self._store.enqueue_tick(schedule, tick, now)
                if job_id is None:
                    continue  # another scheduler enqueued it (or it was paused meanwhile)
                enqueued.append(job_id)
                late = now - tick > self.grace
                log.log(
                    logging.INFO if late else logging.DEBUG,
                    "schedule %r: tick %s enqueued as job %d%s",
                    schedule.name,
                    tick.isoformat(),
                    job_id,
                    " (missed, caught up)" if late else "",
                    extra={"schedule": schedule.name, "job_id": job_id, "queue": schedule.queue},
                )
        self.enqueued += len(enqueued)
        return enqueued

    def next_wake(self, now: datetime) -> datetime:
        """When the next pass is due: the earliest next tick, at most :data:`REFRESH`
        away."""
        wake = now + REFRESH
        for schedule in self.schedules:
            wake = min(wake, schedule.cadence.next_after(now))
        return wake

    async def run(self) -> None:
        """Register, then enqueue ticks until :meth:`stop`. A database that goes away
        is retried with backoff, logged once when lost and once when back."""
        if not self.schedules:
            return
        log.info(
            "scheduler runs %d schedule(s): %s",
            len(self.schedules),
            ", ".join(f"{s.name} ({s.cadence.describe()})" for s in self.schedules),
        )
        failures, level = 0, logging.WARNING
        while not self._stop.is_set():
            try:
                await self.run_once()
            except Exception as exc:
                failures += 1
                if failures == 1:
                    if isinstance(exc, TaskdbError):
                        level = retry_level(exc)  # an outage: the database logs it once
                        log.log(level, "scheduler: %s; retrying", exc)
                    else:
                        log.exception("scheduler failed unexpectedly; retrying")
                await self._pause(min(0.5 * 2**failures, MAX_BACKOFF))
                continue
            if failures:
                log.log(level, "scheduler: the database is back after %d failed pass(es)", failures)
                failures, level = 0, logging.WARNING
            now = self._clock()
            await self._pause((self.next_wake(now) - now).total_seconds() + _LATE)
        self._stop.clear()  # it can run again
        log.info("scheduler stopped: %d job(s) enqueued", self.enqueued)

    def stop(self) -> None:
        """Make :meth:`run` return after the pass under way (if any); a :meth:`run`
        not started yet returns at once."""
        self._stop.set()

    async def _pause(self, seconds: float) -> None:
        if self._sleep is not None:
            await self._sleep(max(seconds, 0.0))
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), max(seconds, 0.0))
