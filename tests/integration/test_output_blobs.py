"""A job's output blobs and its outcome stand or fall together (both dialects).

Blobs are linked to their job by the outcome's own transaction: a worker fenced
off or killed -9 between writing its blobs and its outcome leaves only orphans,
which ``gc`` reclaims. A database that fails while a finished attempt's output
is stored does not count against the job: the write is retried, or the job is
given back with its attempt uncounted.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from sqlalchemy import make_url

import taskdb
from taskdb import (
    JobContext,
    JobQueueClient,
    JobQueueServer,
    JobStatus,
    SqlTaskOutputRepository,
    is_cache_ref,
    resolve_job_output,
)
from taskdb.core.clock import utcnow
from taskdb.core.refs import make_cache_ref
from taskdb.store.blobs import BlobStore
from taskdb.store.jobs import JobStore
from tests.conftest import PG_ADMIN_URL
from tests.helpers import eventually, outside_writer
from tests.integration.conftest import FAST
from tests.integration.procs import QUEUE, Procs

DATA = b"output bytes " * 100


async def blob_keys(db: taskdb.Database) -> set[str]:
    return {b.key for b in await BlobStore(db).list_blobs()}


async def referenced_keys(db: taskdb.Database, job_id: int) -> set[str]:
    job = await JobQueueClient(db, "q").get(job_id)
    return {v["$ref"] for v in (job.output or {}).values() if is_cache_ref(v)}


async def test_a_fenced_off_completion_leaves_no_blob_after_gc(
    db: taskdb.Database, serve: Callable[..., Any]
) -> None:
    """The job's lease is taken away while its handler runs: the output's blob is
    written, the outcome fenced off, and the blob is an orphan gc takes (before,
    a link written ahead of the outcome kept it until the job was purged)."""

    async def handler(value: Any, ctx: JobContext) -> Any:
        # a reaper that thinks the lease long expired: the job fails as LeaseExpired
        await JobStore(db).reap("q", utcnow() + timedelta(hours=1))
        return {"data": DATA}

    # a long lease: no heartbeat notices the loss before the outcome is written
    server = await serve(handler, reference_threshold_bytes=0, lease_seconds=60)
    handle = await JobQueueClient(db, "q").submit({}, max_retries=0)
    await eventually(lambda: asyncio.sleep(0, server.stats().lost), lambda n: n == 1)
    job = await JobQueueClient(db, "q").get(handle.id)
    assert (job.status, job.error_code, job.output) == (JobStatus.FAILED, "LeaseExpired", None)
    assert len(await blob_keys(db)) == 1  # written, never referenced
    report = await BlobStore(db).gc(grace_seconds=0)
    assert report.blobs_removed == 1
    assert await blob_keys(db) == set()


@pytest.mark.timeout(90)
@pytest.mark.skipif(sys.platform == "win32", reason="needs POSIX signals")
async def test_a_worker_killed_between_its_blobs_and_its_outcome_leaks_nothing(
    db: taskdb.Database, procs: Procs
) -> None:
    client = JobQueueClient(db, QUEUE, poll_interval=0.02)
    a = procs.start(
        "A", mode="blob", lease=1.0, extra=("--threshold", "0", "--hang-before-outcome")
    )
    await procs.ready(a)
    handle = await client.submit({}, max_retries=3)
    out = procs.out
    await procs.wait_until(lambda: list(out.glob(f"{handle.id}.outcome.*")), "A's stored output")
    assert len(await blob_keys(db)) == 1
    os.kill(a.pid, signal.SIGKILL)
    await procs.exited(a)

    b = procs.start("B", mode="blob", lease=1.0, extra=("--threshold", "0"))
    await procs.ready(b)
    output = await handle.wait(timeout=30)
    assert output["pid"] == b.pid
    assert len(await blob_keys(db)) == 2
    await BlobStore(db).gc(grace_seconds=0)
    kept = await blob_keys(db)
    assert kept == await referenced_keys(db, handle.id) and len(kept) == 1
    job = await client.get(handle.id)
    assert (job.status, job.attempts) == (JobStatus.COMPLETED, 2)
    resolved = await resolve_job_output(output, SqlTaskOutputRepository(db))
    assert bytes(resolved["data"]) == f"{handle.id}:{b.pid}".encode() * 100
    await procs.terminate(b)


async def test_a_handler_returning_a_ref_to_no_blob_fails_clearly(
    db: taskdb.Database, serve: Callable[..., Any]
) -> None:
    async def handler(value: Any, ctx: JobContext) -> Any:
        return {"data": make_cache_ref("no-such-blob", size=3)}

    await serve(handler)
    handle = await JobQueueClient(db, "q", poll_interval=0.02).submit({}, max_retries=0)
    with pytest.raises(taskdb.JobError, match="do not exist"):
        await handle.wait(timeout=30)
    job = await JobQueueClient(db, "q").get(handle.id)
    assert (job.status, job.error_code) == (JobStatus.FAILED, "InvalidJobInput")


async def test_an_abort_that_wins_over_a_completion_links_no_blob(
    db: taskdb.Database, serve: Callable[..., Any]
) -> None:
    """The job is aborted as its handler returns: the outcome ends FAILED (aborted)
    with no output, and its blob, never referred to, goes at gc."""
    client = JobQueueClient(db, "q", poll_interval=0.02)

    async def handler(value: Any, ctx: JobContext) -> Any:
        await client.abort(ctx.job.id)  # ABORTING; no poll sees it before the outcome
        return {"data": b"z" * 100}

    await serve(handler, reference_threshold_bytes=0, abort_poll_interval=60, lease_seconds=120)
    handle = await client.submit({})
    with pytest.raises(taskdb.AbortedJobError):
        await handle.wait(timeout=30)
    job = await client.get(handle.id)
    assert job.output is None
    assert (await BlobStore(db).gc(grace_seconds=0)).blobs_removed == 1
    assert await blob_keys(db) == set()


# -- a database failing after the handler returned ---------------------------------------


def pg_connections(url: str, *, allowed: bool) -> None:
    """Refuse (killing those open) or allow again the connections to the test
    database at ``url``, and only that one."""
    name = make_url(url).database
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {str(allowed).lower()}')
        if not allowed:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            )


class Outage:
    """A real database failure started from inside a handler, over ``seconds``
    later: on PostgreSQL the database's connections are killed and new ones
    refused; on SQLite another connection, in a thread of its own, holds the
    write lock for longer than the busy timeout of :meth:`database` (taken on
    the event loop, it would block the loop while a transaction of the worker
    waits for the loop to commit)."""

    def __init__(self, url: str, seconds: float = 1.0) -> None:
        self.url = url
        self.seconds = seconds
        self.over = asyncio.Event()
        self._pg = make_url(url).get_backend_name() == "postgresql"
        self._ending: asyncio.Task[None] | None = None
        self._release = threading.Event()
        self._holder: threading.Thread | None = None

    def database(self) -> taskdb.Database:
        return taskdb.connect(self.url, sqlite_busy_timeout=0.1)

    def _hold_the_write_lock(self, taken: threading.Event) -> None:
        lite = outside_writer(self.url)  # BEGIN IMMEDIATE (it waits for the lock)
        taken.set()
        self._release.wait()
        lite.execute("COMMIT")
        lite.close()

    async def start(self) -> None:
        if self._pg:
            await asyncio.to_thread(pg_connections, self.url, allowed=False)
        else:
            taken = threading.Event()
            self._holder = threading.Thread(target=self._hold_the_write_lock, args=(taken,))
            self._holder.start()
            await asyncio.to_thread(taken.wait)
        self._ending = asyncio.ensure_future(self._end())

    async def _end(self) -> None:
        await asyncio.sleep(self.seconds)
        await self.restore()

    async def restore(self) -> None:
        if self._pg:
            await asyncio.to_thread(pg_connections, self.url, allowed=True)
        elif self._holder is not None:
            self._release.set()
            await asyncio.to_thread(self._holder.join)
        self.over.set()


@asynccontextmanager
async def serving(outage: Outage, handler: Any) -> AsyncIterator[taskdb.Database]:
    db = outage.database()
    server = JobQueueServer(db, "q", handler, reference_threshold_bytes=0, **FAST)
    try:
        async with server:
            yield db
            await asyncio.wait_for(outage.over.wait(), 30)
    finally:
        await outage.restore()
        await db.aclose()


async def test_a_blob_write_through_an_outage_is_retried_not_charged(
    db_url: str,
) -> None:
    outage = Outage(db_url)
    runs: list[int] = []

    async def handler(value: Any, ctx: JobContext) -> Any:
        runs.append(ctx.job.attempts)
        if len(runs) == 1:
            await outage.start()  # the database fails as the handler returns
        return {"data": DATA}

    async with serving(outage, handler) as db:
        handle = await JobQueueClient(db, "q", poll_interval=0.02).submit({}, max_retries=0)
        await asyncio.wait_for(outage.over.wait(), 30)
        output = await handle.wait(timeout=30)
        job = await JobQueueClient(db, "q").get(handle.id)
        assert (job.status, job.attempts, runs) == (JobStatus.COMPLETED, 1, [1])
        resolved = await resolve_job_output(output, SqlTaskOutputRepository(db))
        assert bytes(resolved["data"]) == DATA


async def test_a_stream_output_through_an_outage_gives_the_job_back_uncharged(
    db_url: str,
) -> None:
    """A chunk stream cannot be replayed: the job is given back (its attempt not
    counted, even with max_retries=0) and runs again once the database is back."""
    outage = Outage(db_url)
    runs: list[int] = []

    async def chunks() -> AsyncIterator[bytes]:
        yield DATA

    async def handler(value: Any, ctx: JobContext) -> Any:
        runs.append(ctx.job.attempts)
        if len(runs) == 1:
            await outage.start()
        return {"data": chunks()}

    async with serving(outage, handler) as db:
        handle = await JobQueueClient(db, "q", poll_interval=0.02).submit({}, max_retries=0)
        await asyncio.wait_for(outage.over.wait(), 30)
        output = await handle.wait(timeout=30)
        job = await JobQueueClient(db, "q").get(handle.id)
        assert (job.status, job.attempts, runs) == (JobStatus.COMPLETED, 1, [1, 1])
        resolved = await resolve_job_output(output, SqlTaskOutputRepository(db))
        assert bytes(resolved["data"]) == DATA
