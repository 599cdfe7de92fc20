"""Multi-process durability: real worker subprocesses sharing one database.

Each test runs on SQLite and PostgreSQL (``db_url``). Workers are
``tests/integration/worker_proc.py`` subprocesses; the test process itself runs no
server unless it says so. Every subprocess is killed at teardown, even on failure.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import pytest

import taskdb
from taskdb import (
    AbortedJobError,
    ChangeKind,
    JobContext,
    JobQueueClient,
    JobQueueServer,
    JobStatus,
    PermanentJobError,
)
from taskdb.core.jobs import Claim
from taskdb.core.retry import Complete
from taskdb.store.feed import ChangeFeed
from taskdb.store.jobs import JobStore
from tests.integration.procs import QUEUE, Procs

pytestmark = [
    pytest.mark.timeout(90),
    pytest.mark.skipif(sys.platform == "win32", reason="needs POSIX signals"),
]


def _markers(out: Path, job_id: int, event: str) -> list[Path]:
    return [p for p in out.glob(f"{job_id}.{event}.*") if not p.name.endswith(".tmp")]


def _marker_text(out: Path, job_id: int, event: str, pid: int) -> str | None:
    path = out / f"{job_id}.{event}.{pid}"
    return path.read_text() if path.exists() else None


def _executions(out: Path) -> list[tuple[int, int]]:
    """``(job id, pid)`` for every line the "record" handler wrote, in every process."""
    runs = []
    for path in sorted(out.glob("exec-*.log")):
        file_pid = int(path.stem.removeprefix("exec-"))
        for line in path.read_text().splitlines():
            job_id, pid = (int(x) for x in line.split())
            assert pid == file_pid, f"{path}: {line!r}"
            runs.append((job_id, pid))
    return runs


def _problems(stderr: str) -> list[str]:
    return [
        line
        for line in stderr.splitlines()
        if "database is locked" in line
        or "Traceback" in line
        or " ERROR " in line
        or " WARNING " in line
    ]


@pytest.fixture
def client(db: taskdb.Database) -> JobQueueClient:
    return JobQueueClient(db, QUEUE, poll_interval=0.05)


# -- 1. claim race --------------------------------------------------------------------

N_JOBS = 2000


async def test_claim_race_runs_every_job_exactly_once(
    db: taskdb.Database, client: JobQueueClient, procs: Procs
) -> None:
    workers = [
        procs.start(f"w{i}", mode="record", workers=8, lease=10.0, poll=0.02) for i in range(4)
    ]
    await procs.ready(*workers)
    # Every 4th handler also writes progress to the database (contending with claims,
    # heartbeats and finishes of all four processes).
    inputs = [{"n": i, "progress": i % 4 == 0} for i in range(N_JOBS)]
    handles = await client.submit_batch(inputs, max_retries=3)
    ids = {h.id for h in handles}
    assert len(ids) == N_JOBS
    wrote_progress = {h.id for h, i in zip(handles, inputs, strict=True) if i["progress"]}
    store = JobStore(db)

    async def all_completed() -> bool:
        counts = {status: n for queue, status, n in await store.counts() if queue == QUEUE}
        assert not counts.get("FAILED"), f"failed jobs: {counts}\n{procs.diagnostics()}"
        return counts.get("COMPLETED") == N_JOBS

    await procs.wait_until(all_completed, f"{N_JOBS} jobs COMPLETED", timeout=60, interval=0.1)
    stats = await procs.terminate(*workers)

    runs = _executions(procs.out)
    per_job = Counter(job_id for job_id, _ in runs)
    assert {j: n for j, n in per_job.items() if n != 1} == {}, "jobs executed more than once"
    assert set(per_job) == ids
    ran_by = dict(runs)
    rows = await store.list_jobs(queue=QUEUE, limit=N_JOBS + 1)
    assert len(rows) == N_JOBS
    wrong = [
        (r.id, r.status, r.attempts, r.output, r.worker_id)
        for r in rows
        if r.status is not JobStatus.COMPLETED
        or r.attempts != 1
        or r.output != {"pid": ran_by[r.id]}
        or r.progress != (50.0 if r.id in wrote_progress else 0.0)
        or r.worker_id is not None
    ]
    assert wrong == []
    pids = set(ran_by.values())
    assert pids <= {w.pid for w in workers}
    assert len(pids) >= 2, f"only {pids} did any work"
    assert sum(s["completed"] for s in stats) == N_JOBS
    assert [(s["failed"], s["retried"], s["lost"], s["released"]) for s in stats] == [
        (0, 0, 0, 0)
    ] * len(workers)
    for w in workers:
        assert _problems(w.stderr()) == [], w.describe()


# -- 2. kill -9 mid-job -----------------------------------------------------------------


async def test_sigkill_mid_job_is_recovered_by_another_worker(
    db: taskdb.Database, client: JobQueueClient, procs: Procs
) -> None:
    a = procs.start("A", mode="block", lease=1.0)
    await procs.ready(a)
    handle = await client.submit({"n": "killed"}, max_retries=3)

    async def held_by_a() -> bool:
        job = await client.get(handle.id)
        return job.status is JobStatus.PROCESSING and job.worker_id == a.worker_id

    await procs.wait_until(held_by_a, "A to claim the job")
    await procs.wait_until(lambda: _markers(procs.out, handle.id, "started"), "A's handler")

    b = procs.start("B", mode="echo", lease=1.0)
    await procs.ready(b)
    # While A lives its heartbeats keep the lease: B (reaping every 0.5 s) must not
    # take the job over during 1.5 lease periods.
    watch_until = time.monotonic() + 1.5
    while time.monotonic() < watch_until:
        job = await client.get(handle.id)
        held = (job.status, job.worker_id, job.attempts)
        assert held == (JobStatus.PROCESSING, a.worker_id, 1), (
            f"live worker A lost its job: {held}\n{procs.diagnostics()}"
        )
        await asyncio.sleep(0.05)

    os.kill(a.pid, signal.SIGKILL)
    await procs.exited(a)
    assert a.proc.returncode == -signal.SIGKILL

    output = await handle.wait(timeout=15)
    assert output == {"pid": b.pid, "echo": {"n": "killed"}}
    job = await client.get(handle.id)
    assert (job.status, job.attempts, job.worker_id) == (JobStatus.COMPLETED, 2, None)
    kinds = [c.kind for c in await ChangeFeed(db).changes(0, job_id=handle.id)]
    assert kinds == [
        ChangeKind.SUBMITTED,
        ChangeKind.CLAIMED,
        ChangeKind.REQUEUED,
        ChangeKind.CLAIMED,
        ChangeKind.COMPLETED,
    ]
    [stats_b] = await procs.terminate(b)
    assert stats_b["completed"] == 1


# -- 3. fencing of a stale worker --------------------------------------------------------


async def test_stale_worker_cannot_overwrite_the_new_owner(
    db: taskdb.Database, client: JobQueueClient, procs: Procs
) -> None:
    # A's handler returns even when cancelled: on waking, A's heartbeat may find the
    # lease lost before the handler's sleep ends (see below); either way A then
    # tries to write its outcome, which must be refused.
    a = procs.start("A", mode="sleep", lease=1.0, extra=("--sleep", "2.0", "--finish-cancelled"))
    await procs.ready(a)
    handle = await client.submit({"n": "fenced"}, max_retries=3)
    started = await procs.wait_until(
        lambda: _marker_text(procs.out, handle.id, "started", a.pid), "A's handler to start"
    )
    sleep_ends = float(started)  # system-wide monotonic time at which A's handler returns
    job = await client.get(handle.id)
    assert (job.status, job.worker_id, job.attempts) == (JobStatus.PROCESSING, a.worker_id, 1)

    await procs.pause_safely(a, handle.id)
    b = procs.start("B", mode="echo", lease=1.0)
    await procs.ready(b)
    output = await handle.wait(timeout=15)
    assert output == {"pid": b.pid, "echo": {"n": "fenced"}}
    done = await client.get(handle.id)
    assert (done.status, done.attempts, done.worker_id) == (JobStatus.COMPLETED, 2, None)
    store = JobStore(db)
    changes = await ChangeFeed(store.db).changes(0, job_id=handle.id)

    # Resume A only once its handler's sleep is over, so that on waking it returns
    # and A tries to record its outcome. A heartbeat of A that was in flight when it
    # was stopped may still win (on SQLite it runs in A's own, stopped, thread and
    # only executes after SIGCONT, seeing B's completion): the handler is then
    # cancelled as lost, and --finish-cancelled makes it return all the same.
    await asyncio.sleep(max(0.0, sleep_ends - time.monotonic()) + 0.05)
    assert _marker_text(procs.out, handle.id, "returned", a.pid) is None
    os.kill(a.pid, signal.SIGCONT)
    await procs.wait_until(
        lambda: _marker_text(procs.out, handle.id, "returned", a.pid) is not None,
        "A's handler to return",
    )
    refused = f"job {handle.id}: lease lost before its outcome was stored"

    async def a_recorded_or_refused() -> bool:
        return refused in a.stderr() or await client.get(handle.id) != done

    await procs.wait_until(a_recorded_or_refused, "A to try to record its outcome")
    assert await client.get(handle.id) == done, "the stale worker overwrote the job"
    assert refused in a.stderr(), a.describe()
    assert await ChangeFeed(store.db).changes(0, job_id=handle.id) == changes

    # The same refusal at the store level: a stale claim, and the right attempt
    # under the wrong worker, write nothing.
    now = datetime.now(UTC)
    stale = [(Claim(handle.id, 1), Complete({"pid": a.pid}))]
    assert await store.finish(a.worker_id, stale, now) == {}
    assert await store.finish(a.worker_id, [(Claim(handle.id, 2), Complete("x"))], now) == {}
    assert await client.get(handle.id) == done
    assert await ChangeFeed(store.db).changes(0, job_id=handle.id) == changes

    stats_a, stats_b = await procs.terminate(a, b)
    assert (stats_a["completed"], stats_a["lost"]) == (0, 1)
    assert (stats_b["completed"], stats_b["lost"]) == (1, 0)


async def test_stalled_worker_that_reclaims_its_job_keeps_it(
    client: JobQueueClient, procs: Procs
) -> None:
    # B reaps (every 0.5 s) but cannot claim: its only slot holds a blocking job.
    b = procs.start("B", mode="block", lease=1.0)
    await procs.ready(b)
    blocker = await client.submit({"n": "keeps B busy"})

    async def b_busy() -> bool:
        job = await client.get(blocker.id)
        return job.status is JobStatus.PROCESSING and job.worker_id == b.worker_id

    await procs.wait_until(b_busy, "B to claim the blocking job")
    # Attempt 1 outlasts the stall below; attempt 2 lasts long enough to be reaped
    # if nothing heartbeats it: with a 1 s lease and B reaping every 0.5 s, an
    # unbeaten lease is gone 1.5 s after its last beat, twice over in 4 s.
    a = procs.start(
        "A",
        mode="sleep",
        workers=2,
        lease=1.0,
        extra=("--sleep", "3.0", "--sleep-retry", "4.0", "--cleanup", "0.5"),
    )
    await procs.ready(a)
    handle = await client.submit({"n": "stalled"}, max_retries=1)
    await procs.wait_until(lambda: _markers(procs.out, handle.id, "started"), "A's handler")

    # A stalls past its lease; B's reaper gives the job back; A resumes and, having a
    # free slot, claims it again (attempt 2) while its attempt 1 is still unwinding.
    await procs.pause_safely(a, handle.id)

    async def requeued() -> bool:
        return (await client.get(handle.id)).status is JobStatus.PENDING

    await procs.wait_until(requeued, "B's reaper to requeue the job")
    os.kill(a.pid, signal.SIGCONT)

    async def ended() -> Any:
        job = await client.get(handle.id)
        return job if job.status.terminal else None

    job = await procs.wait_until(ended, "the job to end", timeout=20)
    # A healthy worker runs attempt 2 to the end, heartbeating it all along.
    assert (job.status, job.attempts, job.error_code) == (JobStatus.COMPLETED, 2, None), (
        f"{job.error}\n{procs.diagnostics()}"
    )
    assert job.output == {"pid": a.pid, "slept": 4.0, "attempt": 2}


# -- 4. abort across processes -------------------------------------------------------------

GRACE = 0.5


async def test_abort_from_another_process(client: JobQueueClient, procs: Procs) -> None:
    # With the default 30 s lease heartbeats come every 10 s: the short waits below
    # also check that an abort is noticed at the worker's poll, not at its heartbeat.
    w = procs.start("W", workers=2, lease=30.0, extra=("--abort-grace", str(GRACE)))
    await procs.ready(w)
    polite = await client.submit({"action": "abortable"}, max_retries=3)
    stubborn = await client.submit({"action": "ignore_abort"}, max_retries=3)
    for h in (polite, stubborn):
        await procs.wait_until(partial(_markers, procs.out, h.id, "started"), f"job {h.id}")

    # A handler that watches abort_signal stops by itself; returning normally
    # after the abort still ends the job aborted.
    await client.abort(polite.id)
    with pytest.raises(AbortedJobError):
        await polite.wait(timeout=5)
    assert _marker_text(procs.out, polite.id, "saw_abort", w.pid) is not None
    job = await client.get(polite.id)
    assert (job.status, job.error_code, job.error, job.attempts, job.output) == (
        JobStatus.FAILED,
        "AbortedJobError",
        "aborted",
        1,
        None,
    )

    # A handler that ignores it is cancelled once the grace period is over.
    aborted_at = time.monotonic()
    await client.abort(stubborn.id)
    with pytest.raises(AbortedJobError):
        await stubborn.wait(timeout=5)
    assert time.monotonic() - aborted_at >= GRACE - 0.05
    assert _marker_text(procs.out, stubborn.id, "cancelled", w.pid) == "True"
    job = await client.get(stubborn.id)
    assert (job.status, job.error_code, job.error, job.attempts) == (
        JobStatus.FAILED,
        "AbortedJobError",
        "aborted",  # by the worker, not "aborted (its worker stopped)" by a reaper
        1,
    )

    # Both slots are free again.
    after = await client.submit({"n": "after"})
    assert await after.wait(timeout=10) == {"pid": w.pid, "echo": {"n": "after"}}
    [stats] = await procs.terminate(w)
    assert (stats["failed"], stats["completed"], stats["lost"]) == (2, 1, 0)


# -- 5. wait() without a server ------------------------------------------------------------


async def test_wait_here_for_a_job_run_by_a_subprocess(
    client: JobQueueClient, procs: Procs
) -> None:
    assert client.server is None
    w = procs.start("W", workers=2)
    await procs.ready(w)
    ok = await client.submit({"x": 1})
    bad = await client.submit({"action": "fail", "why": "bad input"}, max_retries=0)
    assert await ok.wait(timeout=15) == {"pid": w.pid, "echo": {"x": 1}}
    with pytest.raises(PermanentJobError, match=f"refused by {w.pid}: bad input") as info:
        await bad.wait(timeout=15)
    assert info.value.error_code == "PermanentJobError"
    await procs.terminate(w)


async def test_subprocess_waits_for_a_job_run_here(
    db: taskdb.Database, client: JobQueueClient, procs: Procs
) -> None:
    ok = await client.submit({"x": 2})
    bad = await client.submit({"action": "fail"}, max_retries=0)
    waiters = [procs.start_waiter("wait-ok", ok.id), procs.start_waiter("wait-bad", bad.id)]
    for waiter in waiters:
        # Each waiter saw its job not yet run: nothing here serves the queue yet.
        await procs.wait_until(partial(waiter.line, "waiting"), f"{waiter.name} to wait")
        assert waiter.line("waiting") == "PENDING"
    assert all(w.proc.poll() is None for w in waiters), procs.diagnostics()

    async def handler(input: Any, ctx: JobContext) -> Any:
        if input.get("action") == "fail":
            raise PermanentJobError("refused in the test process")
        return {"pid": os.getpid(), "echo": input}

    server = JobQueueServer(db, QUEUE, handler, workers=2, poll_interval=0.05)
    await server.start()
    try:
        await procs.exited(*waiters, timeout=20)
    finally:
        await server.stop()
    for waiter in waiters:
        assert waiter.proc.returncode == 0, waiter.describe()
    assert waiters[0].payload("result") == {"output": {"pid": os.getpid(), "echo": {"x": 2}}}
    assert waiters[1].payload("result") == {
        "error_class": "PermanentJobError",
        "error_code": "PermanentJobError",
        "message": "refused in the test process",
    }
