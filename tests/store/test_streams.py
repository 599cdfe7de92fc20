"""Durable stream rows: appends are fenced by (job, attempt, worker); terminal close once."""

from __future__ import annotations

from datetime import UTC, datetime

import taskdb
from taskdb.store.jobs import JobOptions, JobStore, NewJob
from taskdb.store.streams import StreamStore
from taskdb.streams import BinaryDelta, Finish, StreamError, TextDelta


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
