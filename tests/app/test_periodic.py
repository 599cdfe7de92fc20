"""Periodic jobs with an injected clock (both dialects): one job per tick however
many schedulers pass, the tick reaching the task, DST, catch-up after downtime,
pause/resume/trigger/delete, orphaned schedules, and bad definitions."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select

import taskdb
from taskdb import InvalidSchedule, JobStatus, ScheduleNotFound
from taskdb.store.schema import jobs
from tests.app.conftest import FAST
from tests.helpers import FakeClock

T0 = datetime(2026, 6, 1, tzinfo=UTC)
ZONE = ZoneInfo("Europe/Paris")


def _app(db: taskdb.Database) -> taskdb.App:
    return taskdb.App(db=db, max_retries=0)


async def _ticks(db: taskdb.Database, task: str) -> list[str]:
    """The tick argument of every job of ``task``, in id order."""
    async with db.transaction(write=False) as conn:
        rows = await conn.execute(
            select(jobs.c.input).where(jobs.c.task == task).order_by(jobs.c.id)
        )
        return [
            (r.input if isinstance(r.input, dict) else json.loads(r.input)).get("tick")
            for r in rows
        ]


async def test_three_hundred_ticks_two_schedulers_one_job_each(db: taskdb.Database) -> None:
    app = _app(db)

    @app.periodic(every=timedelta(seconds=1), timezone="Europe/Paris")
    @app.task(queue="ticks", name="beat")
    async def beat(tick: datetime) -> str:
        assert tick.tzinfo is not None
        return tick.isoformat()

    clock = FakeClock(T0)
    first, second = app.scheduler(clock=clock), app.scheduler(clock=clock)
    await first.register()
    for i in range(300):
        clock.advance(1)
        if i % 3 == 0:
            await asyncio.gather(first.run_once(), second.run_once())
        else:
            for scheduler in (first, second)[:: 1 if i % 2 else -1]:
                await scheduler.run_once()
    ticks = await _ticks(db, "beat")
    expected = [(T0 + timedelta(seconds=s)).astimezone(ZONE).isoformat() for s in range(1, 301)]
    assert ticks == expected  # no duplicate, no gap, in order
    assert first.enqueued + second.enqueued == 300
    async with app.serve(**FAST):
        handles = [beat.handle(i) for i in await _job_ids(db, "beat")]
        assert [await h.result(timeout=30) for h in handles] == expected


async def _job_ids(db: taskdb.Database, task: str) -> list[int]:
    async with db.transaction(write=False) as conn:
        return list(
            await conn.scalars(select(jobs.c.id).where(jobs.c.task == task).order_by(jobs.c.id))
        )


@pytest.mark.parametrize(("policy", "count"), [("latest", 1), ("all", 10), ("none", 0)])
async def test_catch_up_after_downtime(db: taskdb.Database, policy: str, count: int) -> None:
    app = _app(db)

    @app.periodic(cron="* * * * *", catch_up=policy)  # type: ignore[arg-type]
    @app.task(name="minutely")
    async def minutely(tick: datetime) -> None: ...

    clock = FakeClock(T0)
    scheduler = app.scheduler(clock=clock)
    await scheduler.register()
    clock.advance(60)
    assert len(await scheduler.run_once()) == 1  # on time
    clock.advance(10 * 60 + 45)  # down for ten ticks; none on time now
    assert len(await scheduler.run_once()) == count
    ticks = await _ticks(db, minutely.name)
    assert len(ticks) == 1 + count
    if policy == "latest":
        assert ticks[-1] == (T0 + timedelta(minutes=11)).isoformat()
    clock.advance(15)  # the next tick is on time again, whatever the policy
    assert len(await scheduler.run_once()) == 1


async def test_max_catch_up_bounds_all(db: taskdb.Database) -> None:
    app = _app(db)

    @app.periodic(cron="* * * * *", catch_up="all", max_catch_up=3)
    @app.task(name="bounded")
    async def bounded(tick: datetime) -> None: ...

    clock = FakeClock(T0)
    scheduler = app.scheduler(clock=clock)
    await scheduler.register()
    clock.advance(24 * 3600 + 45)
    assert len(await scheduler.run_once()) == 3
    assert (await _ticks(db, bounded.name))[-1] == (T0 + timedelta(days=1)).isoformat()


async def test_dst_gap_does_not_run_and_repeat_runs_once(db: taskdb.Database) -> None:
    app = _app(db)

    @app.periodic(cron="30 2 * * *", timezone="Europe/Paris", catch_up="none")
    @app.task(name="nightly")
    async def nightly(tick: datetime) -> None: ...

    for start in (datetime(2026, 3, 27, 12, tzinfo=UTC), datetime(2026, 10, 23, 12, tzinfo=UTC)):
        clock = FakeClock(start)
        scheduler = app.scheduler(clock=clock)
        await scheduler.register()
        # four days, a pass every half hour: on every :00 and :30 UTC, so on each
        # 02:30 Paris (CET and CEST alike) and on the hour either side of it
        for _ in range(4 * 24 * 2):
            clock.advance(1800)
            await scheduler.run_once()
    ticks = await _ticks(db, nightly.name)
    assert ticks == [
        "2026-03-28T02:30:00+01:00",
        # 2026-03-29 02:30 does not exist in Paris
        "2026-03-30T02:30:00+02:00",
        "2026-03-31T02:30:00+02:00",
        "2026-10-24T02:30:00+02:00",
        "2026-10-25T02:30:00+02:00",  # 02:30 happened twice that night: one job
        "2026-10-26T02:30:00+01:00",
        "2026-10-27T02:30:00+01:00",
    ]


async def test_operators_pause_resume_trigger_and_delete(db: taskdb.Database) -> None:
    app = _app(db)

    @app.periodic(every=timedelta(minutes=1), name="report", kwargs={"size": 3})
    @app.task(queue="reports", name="report_task", priority=5)
    async def report(tick: datetime, size: int, label: str = "x") -> int:
        return size

    clock = FakeClock(T0)
    scheduler = app.scheduler(clock=clock)
    admin = taskdb.Admin(db, clock=clock)
    await scheduler.register()
    (info,) = await admin.schedules()
    assert (info.name, info.task, info.queue, info.every, info.paused, info.orphaned) == (
        "report", "report_task", "reports", timedelta(minutes=1), False, False
    )  # fmt: skip
    assert (info.next_tick, info.last_tick, info.last_job_id) == (
        T0 + timedelta(minutes=1),
        None,
        None,
    )

    clock.advance(60)
    (job_id,) = await scheduler.run_once()
    job = await admin.get_job(job_id)
    assert job.input == {"size": 3, "label": "x", "tick": (T0 + timedelta(minutes=1)).isoformat()}
    assert (job.queue, job.priority, job.task) == ("reports", 5, "report_task")
    (info,) = await admin.schedules()
    assert (info.last_tick, info.last_job_id, info.last_job_status) == (
        T0 + timedelta(minutes=1), job_id, JobStatus.PENDING
    )  # fmt: skip

    await admin.pause_schedule("report")
    clock.advance(10 * 60)
    assert await scheduler.run_once() == []
    (info,) = await admin.schedules()
    assert info.paused and info.next_tick is None
    triggered = await admin.trigger_schedule("report")  # paused or not
    job = await admin.get_job(triggered)
    assert job.input["tick"] == clock.now.isoformat() and job.task == "report_task"

    await admin.resume_schedule("report")
    clock.advance(70)  # the ticks missed while paused do not run; the next one does
    ran = await scheduler.run_once()
    assert len(ran) == 1
    assert (await admin.get_job(ran[0])).input["tick"] == (T0 + timedelta(minutes=12)).isoformat()

    for action in (admin.pause_schedule, admin.resume_schedule, admin.trigger_schedule):
        with pytest.raises(ScheduleNotFound, match="'nope'"):
            await action("nope")
    with pytest.raises(InvalidSchedule):
        await admin.pause_schedule("bad name")
    # by word, as the CLI and the dashboard ask
    assert await admin.act_on_schedule("report", "pause") is None
    assert (await admin.schedules())[0].paused
    assert await admin.act_on_schedule("report", "resume") is None
    assert not (await admin.schedules())[0].paused
    fired = await admin.act_on_schedule("report", "trigger")
    assert fired is not None and (await admin.get_job(fired)).task == "report_task"
    with pytest.raises(taskdb.ConfigurationError, match="no schedule action 'explode'"):
        await admin.act_on_schedule("report", "explode")

    await admin.delete_schedule("report")
    assert await admin.schedules() == []
    with pytest.raises(ScheduleNotFound):
        await admin.delete_schedule("report")
    clock.advance(60)
    await scheduler.run_once()  # still in code: registered again, and ticks on
    assert [i.name for i in await admin.schedules()] == ["report"]


async def test_a_schedule_removed_from_code_is_orphaned_not_enqueued(db: taskdb.Database) -> None:
    old, new = _app(db), _app(db)
    for app, names in ((old, ("kept", "gone")), (new, ("kept",))):
        for name in names:
            app.periodic(every=timedelta(seconds=10), name=name)(
                app.task(name=f"{name}_task")(_noop)
            )
    clock = FakeClock(T0)
    await old.scheduler(clock=clock).register()
    scheduler = new.scheduler(clock=clock)  # the deploy that removed "gone"
    for _ in range(40):
        clock.advance(10)
        await scheduler.run_once()
    infos = {i.name: i for i in await taskdb.Admin(db, clock=clock).schedules()}
    assert (infos["kept"].orphaned, infos["gone"].orphaned) == (False, True)
    assert infos["gone"].last_job_id is None and len(await _ticks(db, "gone_task")) == 0
    assert len(await _ticks(db, "kept_task")) == 40


async def _noop() -> None:
    return None


def test_bad_definitions_fail_at_decoration(db: taskdb.Database) -> None:
    app = _app(db)

    @app.task(name="needs_size")
    async def needs_size(tick: datetime, size: int) -> None: ...

    with pytest.raises(InvalidSchedule, match="size"):
        app.periodic(every=timedelta(seconds=5))(needs_size)  # size is required
    with pytest.raises(InvalidSchedule, match="size"):
        app.periodic(every=timedelta(seconds=5), kwargs={"size": "big"})(needs_size)
    with pytest.raises(InvalidSchedule, match="tick"):
        app.periodic(every=timedelta(seconds=5), kwargs={"size": 1, "tick": T0})(needs_size)
    with pytest.raises(InvalidSchedule, match="bad cron"):
        app.periodic(cron="every day")
    with pytest.raises(InvalidSchedule, match="catch_up"):
        app.periodic(every=timedelta(seconds=5), catch_up="most")(needs_size)  # type: ignore[arg-type]
    app.periodic(every=timedelta(seconds=5), kwargs={"size": 1})(needs_size)
    with pytest.raises(InvalidSchedule, match="defined twice"):
        app.periodic(every=timedelta(seconds=9), kwargs={"size": 2})(needs_size)
    assert list(app.schedules) == ["needs_size"]


def test_periodic_registers_a_plain_function_as_a_task(db: taskdb.Database) -> None:
    app = _app(db)

    def ping() -> str:
        return "pong"

    task = app.periodic(every=timedelta(seconds=10), name="heartbeat")(ping)
    assert isinstance(task, taskdb.TypedTask) and task.name in app.tasks
    assert app.schedules["heartbeat"].tick_param is None


async def test_a_stop_before_run_returns_at_once(db: taskdb.Database) -> None:
    app = _app(db)
    app.periodic(every=timedelta(seconds=1), name="soon")(app.task(name="soon_task")(_noop))
    scheduler = app.scheduler()
    scheduler.stop()  # e.g. Ctrl-C before the scheduler's task first ran
    await asyncio.wait_for(scheduler.run(), 10)
    run = asyncio.ensure_future(scheduler.run())  # and it can run again afterwards
    await asyncio.sleep(0.05)
    assert not run.done()
    scheduler.stop()
    await asyncio.wait_for(run, 10)
