"""Queue behaviour through a real in-process server, on both dialects."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import taskdb
from taskdb import (
    AbortedJobError,
    ConcurrencyLimiter,
    DeadlineExceeded,
    DelayLimiter,
    InvalidJobInput,
    JobContext,
    JobError,
    JobNotFound,
    JobQueueClient,
    JobQueueServer,
    JobStatus,
    NullLimiter,
    PermanentJobError,
    RateLimiter,
    RetryableJobError,
    RetryPolicy,
    WaitTimeout,
)
from tests.conftest import POOLED, pooled_db_url
from tests.helpers import FakeClock, eventually
from tests.integration.conftest import FAST


@pytest.fixture(params=POOLED)
def db_url(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Also through PgBouncer in transaction mode (tests/conftest.py)."""
    return pooled_db_url(request, monkeypatch)


NO_BACKOFF = RetryPolicy(base_seconds=0.0, jitter=0.0)

Handler = Callable[[Any, JobContext], Any]


async def test_job_output_reaches_wait(client: JobQueueClient, serve: Any) -> None:
    async def double(value: Any, ctx: JobContext) -> Any:
        return {"double": value["n"] * 2, "job": ctx.job.id}

    await serve(double, workers=4)
    handles = await client.submit_batch([{"n": i} for i in range(20)])
    outputs = [await h.wait(timeout=10) for h in handles]
    assert outputs == [{"double": i * 2, "job": h.id} for i, h in enumerate(handles)]
    job = await client.get(handles[0].id)
    assert job.status is JobStatus.COMPLETED and job.attempts == 1 and job.completed_at


async def test_retries_follow_backoff_on_the_clock(db: taskdb.Database, serve: Any) -> None:
    clock = FakeClock()
    client = JobQueueClient(db, "q", poll_interval=0.02, clock=clock)
    runs: list[datetime] = []

    async def flaky(value: Any, ctx: JobContext) -> Any:
        runs.append(clock())
        if len(runs) < 3:
            raise ValueError(f"failure {len(runs)}")
        return "ok"

    policy = RetryPolicy(base_seconds=10, factor=3, jitter=0)
    await serve(flaky, retry=policy, clock=clock)
    handle = await client.submit({}, max_retries=2)
    row = await eventually(handle.get, lambda j: j.attempts == 1 and j.status == "PENDING")
    assert row.run_after == clock.now + timedelta(seconds=10)
    assert row.error == "failure 1" and row.error_code == "ValueError"
    await asyncio.sleep(0.1)  # the server polls but the retry is not due yet
    assert len(runs) == 1
    clock.advance(10)
    row = await eventually(handle.get, lambda j: j.attempts == 2 and j.status == "PENDING")
    assert row.run_after == clock.now + timedelta(seconds=30)  # 10 * 3
    clock.advance(30)
    assert await handle.wait(timeout=10) == "ok"
    assert (await handle.get()).attempts == 3


async def test_retry_at_overrides_backoff(db: taskdb.Database, serve: Any) -> None:
    clock = FakeClock()
    client = JobQueueClient(db, "q", poll_interval=0.02, clock=clock)
    when = clock.now + timedelta(hours=1)

    async def later(value: Any, ctx: JobContext) -> Any:
        if ctx.job.attempts == 1:
            raise RetryableJobError("not yet", retry_at=when)
        return ctx.job.attempts

    await serve(later, clock=clock)
    handle = await client.submit({})
    row = await eventually(handle.get, lambda j: j.status == "PENDING" and j.attempts == 1)
    assert row.run_after == when
    clock.advance(3600)
    assert await handle.wait(timeout=10) == 2


async def test_error_classes_survive_the_row(client: JobQueueClient, serve: Any) -> None:
    async def fail(value: Any, ctx: JobContext) -> Any:
        if value == "permanent":
            raise PermanentJobError("no way")
        if value == "retryable":
            raise RetryableJobError("try again")
        raise KeyError("user bug")

    await serve(fail, retry=NO_BACKOFF)
    permanent = await client.submit("permanent", max_retries=5)
    with pytest.raises(PermanentJobError, match="no way"):
        await permanent.wait(timeout=10)
    assert (await permanent.get()).attempts == 1  # never retried

    retryable = await client.submit("retryable", max_retries=2)
    with pytest.raises(RetryableJobError, match="try again"):
        await retryable.wait(timeout=10)
    assert (await retryable.get()).attempts == 3  # first run + 2 retries

    user = await client.submit("other", max_retries=0)
    with pytest.raises(JobError) as info:
        await user.wait(timeout=10)
    assert info.value.error_code == "KeyError"


async def test_priority_runs_first(client: JobQueueClient, serve: Any) -> None:
    order: list[str] = []

    async def record(value: Any, ctx: JobContext) -> Any:
        order.append(value)

    low = await client.submit_batch(["low-1", "low-2"])
    high = await client.submit("high", priority=10)
    mid = await client.submit("mid", priority=5)
    await serve(record, workers=1)
    for h in [*low, high, mid]:
        await h.wait(timeout=10)
    assert order == ["high", "mid", "low-1", "low-2"]


async def test_run_after_is_honoured(db: taskdb.Database, serve: Any) -> None:
    clock = FakeClock()
    client = JobQueueClient(db, "q", poll_interval=0.02, clock=clock)
    ran: list[Any] = []

    async def record(value: Any, ctx: JobContext) -> Any:
        ran.append(value)

    later = await client.submit("later", run_after=clock.now + timedelta(minutes=5))
    now = await client.submit("now")
    await serve(record, clock=clock)
    await now.wait(timeout=10)
    await asyncio.sleep(0.1)
    assert ran == ["now"]
    clock.advance(300)
    await later.wait(timeout=10)
    assert ran == ["now", "later"]


async def test_deadline_cancels_a_running_handler(client: JobQueueClient, serve: Any) -> None:
    cancelled = asyncio.Event()

    async def slow(value: Any, ctx: JobContext) -> Any:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    await serve(slow)
    deadline = datetime.now(UTC) + timedelta(seconds=0.3)
    handle = await client.submit({}, deadline=deadline, max_retries=3)
    with pytest.raises(DeadlineExceeded):
        await handle.wait(timeout=10)
    assert cancelled.is_set()
    assert (await handle.get()).attempts == 1


async def test_abort_sets_the_signal_then_fails_the_job(client: JobQueueClient, serve: Any) -> None:
    started = asyncio.Event()

    async def cooperative(value: Any, ctx: JobContext) -> Any:
        started.set()
        await ctx.abort_signal.wait()
        raise RuntimeError("stopping because aborted")

    await serve(cooperative)
    handle = await client.submit({}, max_retries=5)
    await asyncio.wait_for(started.wait(), 10)
    await handle.abort()
    with pytest.raises(AbortedJobError):
        await handle.wait(timeout=10)
    job = await handle.get()
    assert job.status is JobStatus.FAILED and job.attempts == 1  # abort beats the retry


async def test_abort_cancels_a_handler_that_ignores_it(client: JobQueueClient, serve: Any) -> None:
    started = asyncio.Event()

    async def stubborn(value: Any, ctx: JobContext) -> Any:
        started.set()
        await asyncio.sleep(60)

    await serve(stubborn, abort_grace_seconds=0.1)
    handle = await client.submit({})
    await asyncio.wait_for(started.wait(), 10)
    await handle.abort()
    with pytest.raises(AbortedJobError):
        await handle.wait(timeout=10)


async def test_graceful_stop_releases_unfinished_jobs(
    db: taskdb.Database, client: JobQueueClient, serve: Any
) -> None:
    started = asyncio.Event()

    async def forever(value: Any, ctx: JobContext) -> Any:
        started.set()
        await asyncio.sleep(60)

    first = JobQueueServer(db, "q", forever, **FAST)
    await first.start()
    handle = await client.submit({})
    await asyncio.wait_for(started.wait(), 10)
    await first.stop(timeout=0.1)
    job = await handle.get()
    assert job.status is JobStatus.PENDING and job.attempts == 0 and job.worker_id is None
    assert first.stats().released == 1

    async def quick(value: Any, ctx: JobContext) -> Any:
        return "done elsewhere"

    await serve(quick)
    assert await handle.wait(timeout=10) == "done elsewhere"


class _GatedLimiter(NullLimiter):
    """Grants every claim; once ``gate`` is set, the next claim waits for it."""

    def __init__(self) -> None:
        self.gate: asyncio.Event | None = None
        self.waiting = asyncio.Event()

    async def reserve(self, want: int, now: datetime) -> int:
        if self.gate is not None:
            gate, self.gate = self.gate, None
            self.waiting.set()
            await gate.wait()
        return want


async def test_a_claim_that_lands_while_stopping_is_given_back(
    db: taskdb.Database, client: JobQueueClient
) -> None:
    """The flush that writes an outcome also claims for the slot it frees; when the
    server is stopping by the time that claim returns, the job goes back."""
    limiter = _GatedLimiter()
    gate = asyncio.Event()

    async def gating(value: Any, ctx: JobContext) -> Any:
        limiter.gate = gate  # this job's outcome flush will claim the next job
        return value

    server = JobQueueServer(db, "q", gating, limiter=limiter, **{**FAST, "workers": 1})
    second, third = await client.submit_batch([2, 3])
    await server.start()
    await asyncio.wait_for(limiter.waiting.wait(), 10)
    stopping = asyncio.ensure_future(server.stop(timeout=5))
    await asyncio.sleep(0)  # stop() is now stopping: it claims nothing more itself
    gate.set()
    await stopping
    assert await second.wait(timeout=1) == 2
    job = await third.get()
    assert (job.status, job.attempts, job.worker_id) == (JobStatus.PENDING, 0, None)
    assert server.stats().released == 1


class _FailingLimiter(NullLimiter):
    """A limiter whose storage is away after the first claim."""

    def __init__(self) -> None:
        self.calls = 0

    async def reserve(self, want: int, now: datetime) -> int:
        self.calls += 1
        if self.calls > 1:
            raise taskdb.StorageError("limiter table unavailable")
        return want


async def test_a_failing_limiter_never_holds_back_outcomes(
    db: taskdb.Database, client: JobQueueClient
) -> None:
    limiter = _FailingLimiter()
    server = JobQueueServer(db, "q", _echo_value, limiter=limiter, **{**FAST, "workers": 1})
    handle = await client.submit(7)
    await server.start()
    try:
        assert await handle.wait(timeout=10) == 7  # its flush's claim failed, not its write
    finally:
        await server.stop(timeout=5)
    assert limiter.calls >= 2


class _NoGiveBack(NullLimiter):
    """A limiter whose table is away whenever unused starts are given back."""

    def __init__(self) -> None:
        self.refused = 0

    async def unreserve(self, count: int, now: datetime) -> None:
        self.refused += 1
        raise taskdb.StorageError("limiter table unavailable")


async def test_a_limiter_that_cannot_take_starts_back_still_runs_the_claimed_jobs(
    db: taskdb.Database, client: JobQueueClient
) -> None:
    """Four slots, one job: the claim's three unused starts cannot be given back;
    the claimed job must still run (not wait in PROCESSING for its lease)."""
    limiter = _NoGiveBack()
    server = JobQueueServer(db, "q", _echo_value, limiter=limiter, **{**FAST, "workers": 4})
    handle = await client.submit(5)
    await server.start()
    try:
        assert await handle.wait(timeout=10) == 5
    finally:
        await server.stop(timeout=5)
    assert limiter.refused >= 1


async def _echo_value(value: Any, ctx: JobContext) -> Any:
    return value


async def test_graceful_stop_lets_running_jobs_finish(
    db: taskdb.Database, client: JobQueueClient
) -> None:
    started = asyncio.Event()

    async def short(value: Any, ctx: JobContext) -> Any:
        started.set()
        await asyncio.sleep(0.2)
        return "finished"

    server = JobQueueServer(db, "q", short, **FAST)
    await server.start()
    handle = await client.submit({})
    await asyncio.wait_for(started.wait(), 10)
    await server.stop(timeout=10)
    assert (await handle.get()).output == "finished"


async def test_progress_reaches_listeners(client: JobQueueClient, serve: Any) -> None:
    proceed = asyncio.Event()

    async def steps(value: Any, ctx: JobContext) -> Any:
        await ctx.update_progress(25, "quarter", {"step": 1})
        await proceed.wait()
        await ctx.update_progress(100, "done")
        return "ok"

    seen: list[tuple[float, str | None, Any]] = []
    await serve(steps)
    handle = await client.submit({})
    unsubscribe = handle.on_progress(lambda p, m, d: seen.append((p, m, d)))
    await eventually(lambda: asyncio.sleep(0, seen), lambda s: len(s) >= 1)
    proceed.set()
    await handle.wait(timeout=10)
    await eventually(lambda: asyncio.sleep(0, seen), lambda s: len(s) >= 2)
    unsubscribe()
    assert seen == [(25.0, "quarter", {"step": 1}), (100.0, "done", None)]
    job = await handle.get()
    assert (job.progress, job.progress_message) == (100.0, "done")


async def test_progress_rejects_out_of_range(client: JobQueueClient, serve: Any) -> None:
    async def bad(value: Any, ctx: JobContext) -> Any:
        await ctx.update_progress(150)

    await serve(bad)
    handle = await client.submit({}, max_retries=0)
    with pytest.raises(JobError) as info:
        await handle.wait(timeout=10)
    assert info.value.error_code == "InvalidJobInput"


async def test_stream_channel_only_for_attached_clients(
    db: taskdb.Database, client: JobQueueClient, serve: Any
) -> None:
    go = asyncio.Event()

    async def talk(value: Any, ctx: JobContext) -> Any:
        await go.wait()
        for i in range(5):
            ctx.emit_stream_event({"i": i})
        return "out"

    server = await serve(talk)
    detached = await client.submit({})
    assert detached.on_stream is None

    attached_client = JobQueueClient(db, "q")
    attached_client.attach(server)
    handle = await attached_client.submit({})
    assert callable(handle.on_stream)
    first: list[object] = []
    second: list[object] = []

    def explode(event: object) -> None:
        raise RuntimeError("listener bug")

    handle.on_stream(first.append)
    handle.on_stream(explode)
    handle.on_stream(second.append)
    go.set()
    assert await handle.wait(timeout=10) == "out"  # the raising listener broke nothing
    assert first == second == [{"i": i} for i in range(5)]
    await detached.wait(timeout=10)


async def test_concurrency_limiter_caps_running_jobs(client: JobQueueClient, serve: Any) -> None:
    running = 0
    peak = 0

    async def track(value: Any, ctx: JobContext) -> Any:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.02)
        running -= 1

    await serve(track, workers=8, limiter=ConcurrencyLimiter(2))
    for h in await client.submit_batch(list(range(12))):
        await h.wait(timeout=10)
    assert peak == 2


async def test_delay_limiter_spaces_starts(db: taskdb.Database, serve: Any) -> None:
    clock = FakeClock()
    client = JobQueueClient(db, "q", poll_interval=0.02, clock=clock)
    ran: list[Any] = []

    async def record(value: Any, ctx: JobContext) -> Any:
        ran.append(value)

    handles = await client.submit_batch(["a", "b"])
    await serve(record, workers=4, limiter=DelayLimiter(60), clock=clock)
    await handles[0].wait(timeout=10)
    await asyncio.sleep(0.1)
    assert ran == ["a"]
    clock.advance(60)
    await handles[1].wait(timeout=10)
    assert ran == ["a", "b"]


async def test_rate_limiter_window_holds_across_servers(db_url: str) -> None:
    clock = FakeClock()
    db_a, db_b = taskdb.connect(db_url), taskdb.connect(db_url)  # as two processes would
    client = JobQueueClient(db_a, "q", poll_interval=0.02, clock=clock)
    ran: list[Any] = []

    async def record(value: Any, ctx: JobContext) -> Any:
        ran.append(value)

    def server(db: taskdb.Database) -> JobQueueServer:
        limiter = RateLimiter(3, 60)
        return JobQueueServer(db, "q", record, workers=4, limiter=limiter, clock=clock, **FAST)

    handles = await client.submit_batch(list(range(8)))
    async with server(db_a), server(db_b):
        await eventually(lambda: asyncio.sleep(0, len(ran)), lambda n: n >= 3)
        await asyncio.sleep(0.2)
        assert len(ran) == 3
        clock.advance(61)
        await eventually(lambda: asyncio.sleep(0, len(ran)), lambda n: n >= 6)
        await asyncio.sleep(0.2)
        assert len(ran) == 6
        clock.advance(61)
        for h in handles:
            await h.wait(timeout=10)
    await db_a.aclose()
    await db_b.aclose()


async def test_scale_workers_and_stats(client: JobQueueClient, serve: Any) -> None:
    gate = asyncio.Event()
    running = 0

    async def held(value: Any, ctx: JobContext) -> Any:
        nonlocal running
        running += 1
        await gate.wait()

    server = await serve(held, workers=1)
    handles = await client.submit_batch(list(range(4)))
    await eventually(lambda: asyncio.sleep(0, running), lambda n: n == 1)
    server.scale_workers(3)
    await eventually(lambda: asyncio.sleep(0, running), lambda n: n == 3)
    assert server.stats().running == 3 and server.stats().workers == 3
    gate.set()
    for h in handles:
        await h.wait(timeout=10)
    # A handle sees the outcome once it is committed; the worker counts it when
    # its flush returns, a moment later.
    stats = await eventually(lambda: asyncio.sleep(0, server.stats()), lambda s: s.completed == 4)
    assert (stats.claimed, stats.completed, stats.running) == (4, 4, 0)


async def test_non_json_output_fails_only_its_job(client: JobQueueClient, serve: Any) -> None:
    outputs: dict[str, Any] = {"object": {"when": object()}, "nan": [math.nan], "ok": {"n": 1}}

    async def produce(value: Any, ctx: JobContext) -> Any:
        return outputs[value]

    handles = await client.submit_batch(["object", "ok", "nan"], max_retries=0)
    await serve(produce, workers=3)
    assert await handles[1].wait(timeout=10) == {"n": 1}
    for handle in (handles[0], handles[2]):
        with pytest.raises(JobError, match="not JSON") as info:
            await handle.wait(timeout=10)
        assert info.value.error_code == "InvalidJobInput"


async def test_an_output_the_database_rejects_fails_only_its_job(
    db: taskdb.Database, client: JobQueueClient, serve: Any
) -> None:
    """A NUL character cannot be stored (PostgreSQL's jsonb refuses it, and SQLite
    refuses it alike): that job fails, its batch-mates do not."""

    async def echo(value: Any, ctx: JobContext) -> Any:
        return {"text": "a\x00b"} if value == "nul" else value

    handles = await client.submit_batch(["before", "nul", "after"], max_retries=0)
    await serve(echo, workers=3)
    assert await handles[0].wait(timeout=10) == "before"
    assert await handles[2].wait(timeout=10) == "after"
    with pytest.raises(JobError) as info:
        await handles[1].wait(timeout=10)
    assert info.value.error_code == "InvalidJobInput"
    assert "rejected" in str(info.value)


async def test_dedupe_returns_the_same_job(client: JobQueueClient) -> None:
    a = await client.submit({"x": 1}, fingerprint="only-once")
    b = await client.submit({"x": 2}, fingerprint="only-once")
    assert a.id == b.id
    assert (await client.get(a.id)).input == {"x": 1}


async def test_output_for_input(client: JobQueueClient, serve: Any) -> None:
    async def echo(value: Any, ctx: JobContext) -> Any:
        return {"echo": value}

    await serve(echo)
    await (await client.submit({"k": [1, 2]})).wait(timeout=10)
    assert await client.output_for_input({"k": [1, 2]}) == {"echo": {"k": [1, 2]}}
    assert await client.output_for_input({"k": [2, 1]}) is None


async def test_subscribe_to_changes_sees_transitions_in_order(
    client: JobQueueClient, serve: Any
) -> None:
    seen: list[tuple[int, str, str]] = []

    async def record(change: taskdb.JobChange) -> None:
        seen.append((change.job_id, change.kind, change.status))

    async def ok(value: Any, ctx: JobContext) -> Any:
        await ctx.update_progress(50)
        return 1

    unsubscribe = await client.subscribe_to_changes(record, poll_interval=0.02)
    await serve(ok)
    handle = await client.submit({})
    await handle.wait(timeout=10)
    await eventually(lambda: asyncio.sleep(0, seen), lambda s: len(s) >= 4)
    unsubscribe()
    assert seen == [
        (handle.id, "submitted", "PENDING"),
        (handle.id, "claimed", "PROCESSING"),
        (handle.id, "progress", "PROCESSING"),
        (handle.id, "completed", "COMPLETED"),
    ]


async def test_wait_timeout(client: JobQueueClient) -> None:
    handle = await client.submit({})
    with pytest.raises(WaitTimeout):
        await handle.wait(timeout=0.05)
    with pytest.raises(TimeoutError):  # WaitTimeout is also a TimeoutError
        await handle.wait(timeout=0.01)


@pytest.mark.parametrize(
    ("value", "options"),
    [
        ({"x": object()}, {}),
        ({"x": math.nan}, {}),
        ({1, 2}, {}),
        ({}, {"run_after": datetime(2026, 1, 1)}),
        ({}, {"deadline": datetime(2026, 1, 1)}),
        ({}, {"max_retries": -1}),
        ({}, {"priority": 2**40}),
        ({}, {"fingerprint": ""}),
    ],
)
async def test_bad_submissions_are_rejected_and_store_nothing(
    client: JobQueueClient, value: Any, options: dict[str, Any]
) -> None:
    with pytest.raises(InvalidJobInput):
        await client.submit(value, **options)
    assert await client._store.list_jobs() == []


async def test_unknown_job_id_raises_everywhere(client: JobQueueClient) -> None:
    with pytest.raises(JobNotFound):
        await client.get(404)
    with pytest.raises(JobNotFound):
        await client.wait(404, timeout=1)
    with pytest.raises(JobNotFound):
        await client.abort(404)


async def test_a_plain_def_handler_runs_in_a_thread_with_a_sync_context(
    client: JobQueueClient, serve: Any
) -> None:
    import threading

    from taskdb import SyncJobContext

    seen: list[str] = []

    def blocking(value: Any, ctx: SyncJobContext) -> Any:
        seen.append(threading.current_thread().name)
        ctx.update_progress(40, "in a thread")
        return {"job": ctx.job.id, "double": value * 2}

    await serve(blocking)
    handle = await client.submit(21)
    assert await handle.wait(timeout=10) == {"job": handle.id, "double": 42}
    assert seen and seen[0] != threading.current_thread().name
    job = await handle.get()
    assert (job.progress, job.progress_message) == (40.0, "in a thread")


async def test_hurry_cuts_a_graceful_stop_short_and_gives_jobs_back(
    db: taskdb.Database, client: JobQueueClient
) -> None:
    started = asyncio.Event()

    async def slow(value: Any, ctx: JobContext) -> Any:
        started.set()
        await asyncio.sleep(60)

    server = JobQueueServer(db, "q", slow, **FAST)
    handle = await client.submit({}, max_retries=0)
    await server.start()
    await asyncio.wait_for(started.wait(), 10)
    stopping = asyncio.ensure_future(server.stop(timeout=60))
    await asyncio.sleep(0.05)
    assert not stopping.done() and server.state is taskdb.ServerState.DRAINING
    server.hurry()
    await asyncio.wait_for(stopping, 5)
    job = await handle.get()
    assert (job.status, job.attempts) == (JobStatus.PENDING, 0)
    assert server.stats().released == 1


async def test_the_health_file_is_touched_at_start_and_every_heartbeat(
    db: taskdb.Database, tmp_path: Any
) -> None:
    health = tmp_path / "alive"

    async def echo(value: Any, ctx: JobContext) -> Any:
        return value

    server = JobQueueServer(db, "q", echo, lease_seconds=0.3, health_file=str(health))
    async with server:
        assert health.exists()  # at start, before the first beat
        first = health.stat().st_mtime_ns
        await eventually(lambda: _mtime(health), lambda t: t > first, timeout=5)


async def _mtime(path: Any) -> int:
    return int(path.stat().st_mtime_ns)
