"""Periodic schedules in the database, and the one rule that keeps each tick to one job.

Each schedule has a row in ``taskdb_schedules``. A scheduler enqueues tick
``t`` in one transaction: it moves the row's ``last_tick`` forward to ``t``
only if it is still before ``t`` (and the schedule is not paused), then inserts
the job and records it on the row. The row's lock (PostgreSQL) or the write
lock (SQLite) orders competing schedulers; the loser finds ``last_tick``
already at ``t``, changes nothing, and inserts nothing. However many
schedulers run, on however many machines, no leader is elected and no tick
runs twice; a scheduler killed mid-tick leaves nothing (its transaction never
committed), so the next pass enqueues that tick.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import or_, select, update

from taskdb.core.jobs import JobOptions, JobStatus, NewJob
from taskdb.core.schedules import Cadence, Schedule, ScheduleInfo
from taskdb.errors import ScheduleNotFound
from taskdb.store.database import Database
from taskdb.store.dialect import Dialect
from taskdb.store.jobs import JobPlans
from taskdb.store.params import bind, bind_list, params
from taskdb.store.plans import Plan, PlanCall, Step
from taskdb.store.schema import UtcDateTime, jobs, schedules

ORPHANED_AFTER = timedelta(minutes=5)
"""A schedule no scheduler registered for this long is shown as orphaned."""

_S = schedules.c
_DEFINITION = (
    "task",
    "queue",
    "cron",
    "every_seconds",
    "timezone",
    "catch_up",
    "max_catch_up",
    "args",
    "tick_param",
    "priority",
    "max_retries",
)


def _definition(schedule: Schedule) -> dict[str, Any]:
    """The row columns code defines (the rest is the schedule's state)."""
    return {
        "task": schedule.task,
        "queue": schedule.queue,
        "cron": schedule.cadence.cron,
        "every_seconds": schedule.cadence.every_seconds,
        "timezone": schedule.cadence.timezone,
        "catch_up": schedule.catch_up,
        "max_catch_up": schedule.max_catch_up,
        "args": schedule.args_json,
        "tick_param": schedule.tick_param,
        "priority": schedule.priority,
        "max_retries": schedule.max_retries,
    }


def schedule_of(row: Any) -> Schedule:
    """The definition stored in a schedule row (what a trigger from an admin tool,
    which does not have the code, enqueues)."""
    every = None if row.every_seconds is None else timedelta(seconds=row.every_seconds)
    return Schedule(
        name=row.name,
        task=row.task,
        queue=row.queue,
        cadence=Cadence(cron=row.cron, every=every, timezone=row.timezone),
        catch_up=row.catch_up,
        max_catch_up=row.max_catch_up,
        args_json=row.args,
        tick_param=row.tick_param,
        priority=row.priority,
        max_retries=row.max_retries,
    )


def job_of(schedule: Schedule, tick: datetime, now: datetime) -> tuple[JobOptions, NewJob]:
    """The job a tick of ``schedule`` enqueues: its arguments, plus the tick (ISO 8601,
    in the schedule's zone) under ``tick_param``."""
    args = json.loads(schedule.args_json)
    if schedule.tick_param is not None:
        args[schedule.tick_param] = tick.astimezone(schedule.cadence.zone).isoformat()
    options = JobOptions(
        run_after=now,
        max_retries=schedule.max_retries,
        priority=schedule.priority,
        task=schedule.task,
    )
    return options, NewJob.of(args)


class SchedulePlans:
    """The schedule logic as plans (:mod:`taskdb.store.plans`)."""

    def __init__(self, d: Dialect) -> None:
        self._d = d
        self._jobs = JobPlans(d)
        tick = bind("tick", UtcDateTime)
        self._advance = (
            update(schedules)
            .where(
                _S.name == bind("name"),
                ~_S.paused,
                _S.not_before < tick,
                or_(_S.last_tick.is_(None), _S.last_tick < tick),
            )
            .values(last_tick=tick)
            .returning(_S.name)
        )
        self._record = (
            update(schedules).where(_S.name == bind("name")).values(last_job_id=bind("job"))
        )
        self._states = select(_S.name, _S.paused, _S.not_before, _S.last_tick).where(
            _S.name.in_(bind_list("names"))
        )
        self._touch = (
            update(schedules)
            .where(_S.name.in_(bind_list("names")))
            .values(seen_at=bind("now", UtcDateTime))
        )

    def register(self, defined: Sequence[Schedule], now: datetime) -> PlanCall[None]:
        """Upsert ``defined``: a new schedule starts with no tick before ``now``; one
        already stored keeps its state (paused, last tick) and takes the new definition."""

        def plan() -> Plan[None]:
            for schedule in defined:
                values = _definition(schedule)
                stmt = self._d.insert(schedules).values(
                    name=schedule.name, not_before=now, created_at=now, seen_at=now, **values
                )
                stmt = stmt.on_conflict_do_update(
                    index_elements=[_S.name],
                    set_={**{k: stmt.excluded[k] for k in _DEFINITION}, "seen_at": now},
                )
                yield Step(stmt, None, "none")
            return None

        return PlanCall(plan)

    def touch(self, names: Sequence[str], now: datetime) -> PlanCall[None]:
        """Say that a scheduler still has ``names`` (see :data:`ORPHANED_AFTER`)."""

        def plan() -> Plan[None]:
            yield Step(self._touch, params(names=list(names), now=now), "none")

        return PlanCall(plan)

    def states(self, names: Sequence[str]) -> PlanCall[dict[str, Any]]:
        """Each schedule's row by name: paused, not_before, last_tick."""

        def plan() -> Plan[dict[str, Any]]:
            rows = yield Step(self._states, params(names=list(names)), "all")
            return {row.name: row for row in rows}

        return PlanCall(plan, write=False, atomic=False)

    def enqueue_tick(
        self, schedule: Schedule, tick: datetime, now: datetime
    ) -> PlanCall[int | None]:
        """Enqueue ``tick``'s job unless another scheduler did (or the schedule is
        paused, or a later tick was enqueued): the new job's id, or ``None``."""

        def plan() -> Plan[int | None]:
            won = yield Step(self._advance, params(name=schedule.name, tick=tick), "scalar")
            if won is None:
                return None
            return (yield from self._enqueue(schedule, tick, now))

        return PlanCall(plan)

    def trigger(self, name: str, now: datetime) -> PlanCall[int]:
        """Enqueue a job of schedule ``name`` now, outside its ticks (the tick
        argument is ``now``): the job's id."""

        def plan() -> Plan[int]:
            row = yield Step(select(schedules).where(_S.name == name), None, "first")
            if row is None:
                raise ScheduleNotFound(name)
            options, new = job_of(schedule_of(row), now, now)
            (job_id,) = yield from self._jobs.submit_plan(row.queue, options, [new], now)
            return job_id

        return PlanCall(plan)

    def _enqueue(self, schedule: Schedule, tick: datetime, now: datetime) -> Plan[int]:
        options, new = job_of(schedule, tick, now)
        (job_id,) = yield from self._jobs.submit_plan(schedule.queue, options, [new], now)
        yield Step(self._record, params(name=schedule.name, job=job_id), "none")
        return job_id

    def set_paused(self, name: str, paused: bool, now: datetime) -> PlanCall[None]:
        """Pause or resume ``name``; a resumed schedule starts again from ``now`` (the
        ticks it missed while paused never run)."""
        values: dict[str, Any] = {"paused": paused}
        if not paused:
            values["not_before"] = now

        def plan() -> Plan[None]:
            stmt = update(schedules).where(_S.name == name).values(**values).returning(_S.name)
            if (yield Step(stmt, None, "scalar")) is None:
                raise ScheduleNotFound(name)
            return None

        return PlanCall(plan)

    def delete(self, name: str) -> PlanCall[None]:
        """Forget ``name`` (a scheduler that still has it registers it again)."""

        def plan() -> Plan[None]:
            stmt = schedules.delete().where(_S.name == name).returning(_S.name)
            if (yield Step(stmt, None, "scalar")) is None:
                raise ScheduleNotFound(name)
            return None

        return PlanCall(plan)

    def infos(self, now: datetime) -> PlanCall[list[ScheduleInfo]]:
        """Every stored schedule for operators, by name, with its last job's status."""
        stmt = (
            select(schedules, jobs.c.status.label("last_job_status"))
            .outerjoin(jobs, jobs.c.id == _S.last_job_id)
            .order_by(_S.name)
        )

        def plan() -> Plan[list[ScheduleInfo]]:
            rows = yield Step(stmt, None, "all")
            return [info_of(row, now) for row in rows]

        return PlanCall(plan, write=False, atomic=False)


def info_of(row: Any, now: datetime) -> ScheduleInfo:
    """What an operator sees of a schedule row (``last_job_status``: its last job's)."""
    schedule = schedule_of(row)
    since = max(row.not_before, row.last_tick) if row.last_tick else row.not_before
    status = row.last_job_status
    return ScheduleInfo(
        name=row.name,
        task=row.task,
        queue=row.queue,
        cron=row.cron,
        every=schedule.cadence.every,
        timezone=row.timezone,
        catch_up=row.catch_up,
        paused=row.paused,
        next_tick=None if row.paused else schedule.cadence.next_after(max(since, now)),
        last_tick=row.last_tick,
        last_job_id=row.last_job_id,
        last_job_status=None if status is None else JobStatus(status),
        orphaned=row.seen_at < now - ORPHANED_AFTER,
    )


class ScheduleStore:
    """The schedules of one :class:`Database` (async)."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.plans = SchedulePlans(db.backend)

    async def register(self, defined: Sequence[Schedule], now: datetime) -> None:
        await self.db.run(self.plans.register(defined, now))

    async def touch(self, names: Sequence[str], now: datetime) -> None:
        await self.db.run(self.plans.touch(names, now))

    async def states(self, names: Sequence[str]) -> dict[str, Any]:
        return await self.db.run(self.plans.states(names))

    async def enqueue_tick(self, schedule: Schedule, tick: datetime, now: datetime) -> int | None:
        return await self.db.run(self.plans.enqueue_tick(schedule, tick, now))

    async def trigger(self, name: str, now: datetime) -> int:
        return await self.db.run(self.plans.trigger(name, now))

    async def set_paused(self, name: str, paused: bool, now: datetime) -> None:
        await self.db.run(self.plans.set_paused(name, paused, now))

    async def delete(self, name: str) -> None:
        await self.db.run(self.plans.delete(name))

    async def infos(self, now: datetime) -> list[ScheduleInfo]:
        return await self.db.run(self.plans.infos(now))
