"""Durable stream rows: appends are fenced by (job, attempt, worker); terminal close once."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import psycopg
from sqlalchemy import make_url

import taskdb
from taskdb.core.jobs import JobOptions, NewJob
from taskdb.store.jobs import JobStore
from taskdb.store.streams import StreamStore
from taskdb.streams import BinaryDelta, Finish, StreamError, TextDelta
from tests.conftest import PG_ADMIN_URL
from tests.helpers import eventually, outside_writer


async def test_only_the_running_attempt_of_its_worker_can_append(db: taskdb.Database) -> None:
    jobs, streams = JobStore(db), StreamStore(db)
    now = datetime.now(UTC)
    options = JobOptions(run_after=now, max_retries=1, durable_stream=True)
    (job_id,) = await jobs.submit("q", options, [NewJob.of({})], now)
    assert not await streams.append(job_id, 1, "w1", 0, [TextDelta("t", "pending")])
    (claimed,) = await jobs.claim("q", "w1", 1, now, 30.0)
    assert await streams.append(job_id, claimed.attempts, "w1", 0, [TextDelta("t", "a")])
    assert not await streams.append(job_id, claimed.attempts, "w2", 1, [TextDelta("t", "x")])
    assert not await streams.append(job_id, claimed.attempts + 1, "w1", 1, [TextDelta("t", "x")])
    assert await streams.append(job_id, claimed.attempts, "w1", 1, [BinaryDelta("b", b"\x00\xff")])
    await streams.append_terminal(job_id, claimed.attempts, Finish({"output": 1}))
    await streams.append_terminal(job_id, claimed.attempts, StreamError(RuntimeError("late")))
    stored = await streams.read(job_id, 0, 10)
    assert [s.event for s in stored] == [
        TextDelta("t", "a"),
        BinaryDelta("b", b"\x00\xff"),
        Finish({"output": 1}),  # closed once: the later close is ignored
    ]
    assert [s.offset for s in stored] == [0, 1, 2]
    assert await streams.next_offset(job_id) == 3


REASSIGN = "UPDATE taskdb_jobs SET worker_id = 'w2', attempts = attempts + 1 WHERE id = {}"


async def _lock_waits(url: str) -> int:
    """Backends of the test's database waiting for a lock."""
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
        row = admin.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND wait_event_type = 'Lock'",
            (make_url(url).database,),
        ).fetchone()
    return int(row[0]) if row else 0


async def test_an_append_racing_a_reassignment_is_refused(db: taskdb.Database, db_url: str) -> None:
    """The ownership check and the insert are one step: an append made while another
    transaction hands the job over waits for it, then sees the new owner."""
    jobs, streams = JobStore(db), StreamStore(db)
    now = datetime.now(UTC)
    options = JobOptions(run_after=now, max_retries=1, durable_stream=True)
    (job_id,) = await jobs.submit("q", options, [NewJob.of({})], now)
    (claimed,) = await jobs.claim("q", "w1", 1, now, 30.0)
    other = outside_writer(db_url)
    other.execute(REASSIGN.format(job_id))  # hands the job to w2, not committed
    try:
        appending = asyncio.ensure_future(
            streams.append(job_id, claimed.attempts, "w1", 0, [TextDelta("t", "stale")])
        )
        if db.dialect == "postgresql":
            await eventually(lambda: _lock_waits(db_url), lambda n: n >= 1)
        else:  # nothing to observe: the append waits on SQLite's write lock
            await asyncio.sleep(0.2)
        assert not appending.done()
    finally:
        other.commit()
        other.close()
    assert not await appending
    assert await streams.read(job_id, 0, 10) == []
