"""A queue-wide concurrency limit holds across worker processes: three workers with
four slots each and `--concurrency-limit 2 --scope queue` never run more than two
jobs of the queue at once (sampled from the database), and every job runs. A job of
a worker killed -9 holds its slot only until its lease expired."""

from __future__ import annotations

import signal
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text

import taskdb
from taskdb import ChangeKind, JobStatus
from taskdb.store.feed import ChangeFeed
from tests.cli.helpers import reap, taskdb_process
from tests.helpers import eventually

BLOCKING = """
import asyncio

async def block(value, ctx):
    await ctx.update_progress(1, "started")
    await asyncio.Event().wait()
"""
HANDLER = """
import asyncio

async def work(value, ctx):
    await asyncio.sleep(0.1)
    return value
"""


def _sampler(
    db_url: str, stop: threading.Event, seen: list[int], errors: list[BaseException]
) -> None:
    """Count the queue's running jobs every few milliseconds until ``stop``; an error
    goes to ``errors`` (for the test to raise: a thread's own would be lost)."""
    engine = create_engine(db_url.replace("postgresql://", "postgresql+psycopg://"))
    query = text("SELECT count(*) FROM taskdb_jobs WHERE status IN ('PROCESSING', 'ABORTING')")
    try:
        with engine.connect() as conn:
            while not stop.is_set():
                seen.append(int(conn.execute(query).scalar_one()))
                conn.commit()  # a fresh snapshot for the next sample
                time.sleep(0.005)
    except BaseException as exc:
        errors.append(exc)
    finally:
        engine.dispose()


def test_three_workers_never_run_more_than_the_queue_limit(db_url: str, tmp_path: Path) -> None:
    (tmp_path / "limited.py").write_text(textwrap.dedent(HANDLER))
    db = taskdb.connect(db_url)
    client = taskdb.SyncJobQueueClient(db, "q", poll_interval=0.02)
    handles = client.submit_batch(list(range(12)))
    seen: list[int] = []
    errors: list[BaseException] = []
    stop = threading.Event()
    sampler = threading.Thread(target=_sampler, args=(db_url, stop, seen, errors))
    sampler.start()
    workers = [
        taskdb_process(
            "worker", "limited:work", "-q", "q", "-c", "4", "--poll", "0.02",
            "--concurrency-limit", "2", "--scope", "queue", db_url=db_url, cwd=tmp_path,
        )
        for _ in range(3)
    ]  # fmt: skip
    try:
        assert [h.wait(timeout=60) for h in handles] == list(range(12))  # none starved
        stop.set()
        sampler.join()
        if errors:
            raise errors[0]
        # 12 jobs of 0.1 s, two at a time: at least 0.6 s of samples 5 ms apart
        assert len(seen) >= 50, f"only {len(seen)} samples taken"
        assert max(seen) == 2, f"running jobs sampled: {sorted(set(seen))}"
        for proc in workers:
            # a worker slow to start (a loaded machine) may have had no job: it must
            # be serving, its signal handlers set, before it is asked to stop
            assert proc.stderr is not None
            while "serving" not in (line := proc.stderr.readline()):
                assert line, "a worker ended before serving"
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=20) == 0
    finally:
        stop.set()
        sampler.join(timeout=10)
        for proc in workers:
            reap(proc)
        db.close()


async def test_a_dead_workers_slot_is_free_once_its_lease_expired(
    db: taskdb.Database, db_url: str, tmp_path: Path
) -> None:
    (tmp_path / "blocking.py").write_text(textwrap.dedent(BLOCKING))
    client = taskdb.JobQueueClient(db, "q", poll_interval=0.02)
    first = await client.submit("first", max_retries=3)
    doomed = taskdb_process(
        "worker", "blocking:block", "-q", "q", "-c", "1", "--lease", "1", "--poll", "0.05",
        db_url=db_url, cwd=tmp_path,
    )  # fmt: skip

    async def read_first() -> taskdb.Job:
        assert doomed.poll() is None, "the worker died before it ran the job"
        return await first.get()

    try:
        await eventually(read_first, lambda job: job.progress == 1, timeout=20)
        second = await client.submit("second")

        async def echo(value: Any, ctx: taskdb.JobContext) -> Any:
            return value

        limiter = taskdb.ConcurrencyLimiter(1, scope="queue")
        server = taskdb.JobQueueServer(
            db, "q", echo, limiter=limiter, lease_seconds=1.5, poll_interval=0.02
        )
        async with server:
            doomed.send_signal(signal.SIGKILL)  # it never gives the job back
            assert doomed.wait(timeout=10) == -signal.SIGKILL
            dead = await first.get()
            assert dead.status is JobStatus.PROCESSING and dead.lease_expires_at is not None
            assert await second.wait(timeout=10) == "second"
            assert await first.wait(timeout=10) == "first"
    finally:
        reap(doomed)
    claims = [
        change.at
        for change in await ChangeFeed(db).changes(0, job_id=second.id)
        if change.kind is ChangeKind.CLAIMED
    ]
    # one claim, not before the dead worker's lease ran out: the limit held till then
    assert len(claims) == 1 and claims[0] >= dead.lease_expires_at, (claims, dead)
    job = await first.get()
    assert (job.attempts, job.worker_id) == (2, None)  # its second attempt, on the live worker
