"""The change feed's retention (both dialects): ``Admin.trim_changes`` and ``taskdb
feed trim`` delete changes older than an age, oldest first and in batches, keep the
jobs, never delete the newest change (SQLite would hand its seq out again under a
reader's cursor), and refuse a bad age with one clear error."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import psycopg
import pytest

import taskdb
from taskdb import ChangeKind, ConfigurationError
from taskdb.store import feed as feed_module
from taskdb.store.feed import ChangeFeed
from tests.cli.helpers import invoke, invoke_failing
from tests.helpers import FakeClock

DAY = 86400.0


async def _submit(db: taskdb.Database, clock: FakeClock, count: int) -> list[int]:
    client = taskdb.JobQueueClient(db, "q", clock=clock)
    return [(await client.submit(i)).id for i in range(count)]


async def test_trims_old_changes_and_keeps_jobs_and_new_changes(db: taskdb.Database) -> None:
    clock = FakeClock()
    old = await _submit(db, clock, 3)
    clock.advance(2 * DAY)
    cursor = (await ChangeFeed(db).page(0, limit=1000)).cursor  # a reader at the head
    new = await _submit(db, clock, 2)
    admin = taskdb.Admin(db, clock=clock)

    assert await admin.trim_changes(timedelta(days=1)) == 3
    assert await admin.trim_changes(timedelta(days=1)) == 0
    remaining = await ChangeFeed(db).changes(0)
    assert [(c.job_id, c.kind) for c in remaining] == [(i, ChangeKind.SUBMITTED) for i in new]
    assert [c.job_id for c in await ChangeFeed(db).changes(cursor)] == new  # reader goes on
    assert await admin.job_history(old[0]) == []
    assert [j.id for j in await admin.list_jobs()] == sorted(old + new, reverse=True)


async def test_never_trims_the_newest_change(db: taskdb.Database) -> None:
    clock = FakeClock()
    first = await _submit(db, clock, 3)
    head = await ChangeFeed(db).head()
    clock.advance(2 * DAY)
    admin = taskdb.Admin(db, clock=clock)
    assert await admin.trim_changes(timedelta(0)) == 2
    assert [c.job_id for c in await ChangeFeed(db).changes(0)] == [first[-1]]
    (later,) = await _submit(db, clock, 1)
    # the new change's seq is above every seq a reader may hold
    assert [c.job_id for c in await ChangeFeed(db).changes(head)] == [later]


async def test_trims_in_batches(db: taskdb.Database, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(feed_module, "TRIM_BATCH", 2)
    clock = FakeClock()
    await _submit(db, clock, 7)
    clock.advance(2 * DAY)
    keep = await _submit(db, clock, 1)
    assert await taskdb.Admin(db, clock=clock).trim_changes(timedelta(days=1)) == 7
    assert [c.job_id for c in await ChangeFeed(db).changes(0)] == keep


async def test_a_change_that_commits_during_a_trim_is_kept(
    fresh_pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL hands out seqs before commit: a change with a lower seq than the
    trimmed ones may commit between the trim's read and its delete. No reader has
    seen it yet, so it must survive: the trim deletes the seqs it read, not a range."""
    db = taskdb.connect(fresh_pg_url)
    clock = FakeClock()
    await _submit(db, clock, 1)  # the schema checked, a change before the late one
    with psycopg.connect(fresh_pg_url) as late:  # a transaction that commits late
        inserted = late.execute(
            "INSERT INTO taskdb_job_changes (job_id, queue, kind, status, attempts, at) "
            "VALUES (0, 'q', 'submitted', 'PENDING', 0, %s) RETURNING seq",
            (clock.now,),
        ).fetchone()
        assert inserted is not None  # its seq is below the next submits' seqs
        old = await _submit(db, clock, 2)  # higher seqs, committed at once
        clock.advance(2 * DAY)
        await _submit(db, clock, 1)  # the newest change, kept

        real_params = feed_module.params

        def commit_late_then(**values: object) -> dict[str, object]:
            late.commit()  # after the trim read the feed, before it deletes
            return real_params(**values)

        monkeypatch.setattr(feed_module, "params", commit_late_then)
        assert await taskdb.Admin(db, clock=clock).trim_changes(timedelta(days=1)) == 3
    seqs = [c.cursor for c in await ChangeFeed(db).changes(0)]
    assert len(seqs) == 2, seqs  # the late change and the newest
    assert all(c.job_id not in old for c in await ChangeFeed(db).changes(0))
    await db.aclose()


@pytest.mark.parametrize("bad", ["7d", 3600, timedelta(seconds=-1), None])
async def test_a_bad_age_is_refused(db: taskdb.Database, bad: object) -> None:
    await _submit(db, FakeClock(), 1)
    with pytest.raises(ConfigurationError, match="older_than"):
        await taskdb.Admin(db).trim_changes(bad)  # type: ignore[arg-type]
    assert len(await ChangeFeed(db).changes(0)) == 1


def test_feed_trim_command(db_url: str) -> None:
    async def submit_old() -> None:
        db = taskdb.connect(db_url)
        try:
            await _submit(db, FakeClock(), 2)  # 2026-01-01: long ago
            await _submit(db, FakeClock(FakeClock().now + timedelta(days=36500)), 1)
        finally:
            await db.aclose()

    asyncio.run(submit_old())
    assert invoke("feed", "trim", "--older-than", "30d", "--db", db_url).output == (
        "trimmed 2 change(s)\n"
    )
    bad = invoke_failing("feed", "trim", "--older-than", "soon", "--db", db_url)
    assert bad.exit_code != 0
    assert len(bad.output.strip().splitlines()) == 1
    assert "Traceback" not in bad.output
