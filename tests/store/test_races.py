"""Races between writers, each forced into one interleaving (both dialects where
the interleaving exists: SQLite runs one writer at a time, so there the second
transaction simply follows the first).

PostgreSQL interleavings are forced with a second connection holding a row
lock, and observed through ``pg_stat_activity`` (a backend waiting on a lock),
never by sleeping.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from sqlalchemy import make_url, text

import taskdb
from taskdb import InvalidJobInput, JobStatus
from taskdb.core.jobs import Claim, JobOptions, NewJob
from taskdb.core.refs import make_cache_ref
from taskdb.core.retry import Complete
from taskdb.store.blobs import BlobStore
from taskdb.store.jobs import JobStore
from tests.helpers import FakeClock, eventually
from tests.store.test_blobs import chunked, leftovers

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def pg_lock(url: str, sql: str, *args: Any) -> psycopg.Connection[Any]:
    """A connection of the test database inside a transaction that ran ``sql`` (a
    lock it holds until ``commit()``)."""
    conn = psycopg.connect(url.replace("+psycopg", ""))
    conn.execute(sql, args)
    return conn


async def waiting_on_a_lock(url: str) -> None:
    """Until a backend of the test database waits on a lock (PostgreSQL)."""
    name = make_url(url).database

    async def waiters() -> int:
        def count() -> int:
            with psycopg.connect(url.replace("+psycopg", ""), autocommit=True) as c:
                row = c.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = %s "
                    "AND wait_event_type = 'Lock'",
                    (name,),
                ).fetchone()
            return int(row[0]) if row else 0

        return await asyncio.to_thread(count)

    await eventually(waiters, lambda n: n > 0)


async def running_job(db: taskdb.Database, worker: str = "w") -> Claim:
    store = JobStore(db)
    await store.submit("q", JobOptions(run_after=NOW, max_retries=0), [NewJob.of({})], NOW)
    [row] = await store.claim_rows("q", worker, 1, NOW, 30.0)
    return Claim(row.id, row.attempts)


async def blob(db: taskdb.Database, clock: FakeClock | None = None) -> str:
    store = BlobStore(db) if clock is None else BlobStore(db, clock=clock)
    return (await store.write(chunked(b"x" * 100, 10))).key


def completed(key: str) -> Complete:
    return Complete({"data": make_cache_ref(key, size=100)}, (key,))


# -- 1. two releases of the same blob ----------------------------------------------------


async def test_two_releases_of_a_blobs_last_two_holders_free_it(
    db: taskdb.Database, db_url: str
) -> None:
    """Not a race: the second release waits for the first one's lock on the blob row,
    and its check, a later statement, sees the first one's unlink committed."""
    store = BlobStore(db)
    key = await blob(db)
    async with db.transaction() as conn:
        await store.link_holders(conn, {"job:1": [key], "job:2": [key]})
    other = taskdb.connect(db_url)

    async def release_second() -> int:
        async with other.transaction() as conn:
            return await BlobStore(other).release_holders(conn, ["job:2"])

    try:
        second: asyncio.Future[int] | None = None
        async with db.transaction() as conn:
            assert await store.release_holders(conn, ["job:1"]) == 0  # job:2 still links it
            if db.dialect == "postgresql":  # job:2's unlink runs, then waits for the lock
                second = asyncio.ensure_future(release_second())
                await waiting_on_a_lock(db_url)
        freed = await (second if second is not None else release_second())
    finally:
        await other.aclose()
    assert freed == 1
    assert await leftovers(db) == (0, 0, 0)


# -- 2. a ref linked while gc runs -------------------------------------------------------


async def test_a_ref_that_gc_took_before_the_outcome_linked_it_fails_the_output(
    db: taskdb.Database, db_url: str
) -> None:
    """gc deletes an old unlinked blob while (PostgreSQL: just before) the outcome that
    refers to it links it: the outcome used to commit COMPLETED with a dangling ref.
    Now it is refused (nothing written), and a server fails the job with that error."""
    clock = FakeClock(datetime.now(UTC) - timedelta(days=1))  # committed long ago
    key = await blob(db, clock)
    claim = await running_job(db)
    store = JobStore(db)
    if db.dialect == "postgresql":  # gc's first statement: lock the orphan
        gc = await asyncio.to_thread(
            pg_lock, db_url, "SELECT id FROM taskdb_blobs WHERE key = %s FOR UPDATE", key
        )
        finish = asyncio.ensure_future(store.finish("w", [(claim, completed(key))], NOW))
        await waiting_on_a_lock(db_url)  # the outcome's link waits for the blob row
        gc.execute("SELECT lo_unlink(oid) FROM taskdb_blobs WHERE key = %s", (key,))
        gc.execute("DELETE FROM taskdb_blobs WHERE key = %s", (key,))
        await asyncio.to_thread(gc.commit)
        gc.close()
        with pytest.raises(InvalidJobInput, match="do not exist"):
            await finish
    else:
        assert (await BlobStore(db).gc()).blobs_removed == 1
        with pytest.raises(InvalidJobInput, match="do not exist"):
            await store.finish("w", [(claim, completed(key))], NOW)
    job = await store.get(claim.job_id)
    assert (job.status, job.output) == (JobStatus.PROCESSING, None)


# -- 3. a cancelled stream racing its commit ---------------------------------------------


class CancelledAsItCommits(BlobStore):
    """The writer's task is cancelled just as its final commit returns (the commit
    happened; the caller never sees the key)."""

    async def _commit(
        self, blob: Any, pieces: list[bytes], offset: int, seq: int, *, final: bool
    ) -> datetime:
        done = await super()._commit(blob, pieces, offset, seq, final=final)
        if final:
            task = asyncio.current_task()
            assert task is not None
            task.cancel()
            await asyncio.sleep(0)
        return done


async def test_a_stream_cancelled_as_it_commits_leaves_nothing(db: taskdb.Database) -> None:
    store = CancelledAsItCommits(db)
    with pytest.raises(asyncio.CancelledError):
        await store.write(chunked(b"y" * 1000, 100))
    assert await leftovers(db) == (0, 0, 0)


# -- 4. an abort racing completion -------------------------------------------------------


# Tested through a server: tests/integration/test_output_blobs.py


# -- 5. a lease expiring while the outcome is written ------------------------------------


async def test_a_lease_expiring_while_the_outcome_is_written(
    db: taskdb.Database, db_url: str
) -> None:
    """PostgreSQL: the outcome has updated the job row and waits to link its blob
    when the reaper runs past the lease: the reaper skips the locked row, the
    outcome commits COMPLETED with its blob linked. SQLite: the reaper runs after
    the outcome. Either way nothing is reaped and the blob is the job's."""
    key = await blob(db)
    claim = await running_job(db)
    store = JobStore(db)
    later = NOW + timedelta(hours=1)
    if db.dialect == "postgresql":
        holder = await asyncio.to_thread(
            pg_lock, db_url, "SELECT id FROM taskdb_blobs WHERE key = %s FOR UPDATE", key
        )
        finish = asyncio.ensure_future(store.finish("w", [(claim, completed(key))], NOW))
        await waiting_on_a_lock(db_url)
        assert await store.reap("q", later) == 0  # SKIP LOCKED: the row is being written
        await asyncio.to_thread(holder.commit)
        holder.close()
        statuses = await finish
    else:
        statuses = await store.finish("w", [(claim, completed(key))], NOW)
        assert await store.reap("q", later) == 0
    assert statuses == {claim.job_id: JobStatus.COMPLETED}
    assert (await BlobStore(db).gc(grace_seconds=0)).blobs_removed == 0
    async with db.transaction(write=False) as conn:
        holders = list(await conn.scalars(text("SELECT holder FROM taskdb_blob_links")))
    assert holders == [f"job:{claim.job_id}"]


async def test_a_lease_reaped_before_the_outcome_fences_it_off(db: taskdb.Database) -> None:
    key = await blob(db)
    claim = await running_job(db)
    store = JobStore(db)
    assert await store.reap("q", NOW + timedelta(hours=1)) == 1
    assert await store.finish("w", [(claim, completed(key))], NOW) == {}
    assert (await BlobStore(db).gc(grace_seconds=0)).blobs_removed == 1


# -- links an ended job's output does not refer to ---------------------------------------


async def test_gc_reclaims_links_an_ended_jobs_output_does_not_name(db: taskdb.Database) -> None:
    """A link made ahead of an outcome that never came (a graph job links its outputs
    before clearing its run cache; its worker died) is reclaimed once the job has
    ended with an output that does not refer to the blob; a running job's links
    and the blobs an output refers to stay."""
    kept, early, running, failed = [await blob(db) for _ in range(4)]
    store, blobs = JobStore(db), BlobStore(db)
    done, gone = await running_job(db), await running_job(db)
    async with db.transaction() as conn:  # linked ahead of their outcomes
        await blobs.link_holders(
            conn, {f"job:{done.job_id}": [early], f"job:{gone.job_id}": [failed]}
        )
    statuses = await store.finish("w", [(done, completed(kept))], NOW)
    assert statuses == {done.job_id: JobStatus.COMPLETED}
    assert await store.reap("q", NOW + timedelta(hours=1)) == 1  # gone: FAILED, no output
    busy = await running_job(db)  # still running: its early link stays
    async with db.transaction() as conn:
        await blobs.link_holders(conn, {f"job:{busy.job_id}": [running]})

    dry = await blobs.gc(dry_run=True)
    assert (dry.stale_links_removed, dry.blobs_removed) == (2, 0)
    report = await blobs.gc()  # no orphan is past the grace: these are links
    assert (report.stale_links_removed, report.blobs_removed) == (2, 2)
    assert report.bytes_freed == 200
    assert {b.key for b in await blobs.list_blobs()} == {kept, running}
    async with db.transaction(write=False) as conn:
        found = await conn.execute(text("SELECT blob_key, holder FROM taskdb_blob_links"))
        links = {(row[0], row[1]) for row in found}
    assert links == {(kept, f"job:{done.job_id}"), (running, f"job:{busy.job_id}")}
