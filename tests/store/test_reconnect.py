"""The reconnect policy on both dialects: every store survives its pooled connections
dying between two calls (a database restart), with no error reaching the caller.

Nothing is mocked. On PostgreSQL the server terminates the test database's backends
(``pg_terminate_backend``). SQLite has no server: the sqlite3 connection under each
connection the pools hold is closed, so its next statement fails with "Cannot operate
on a closed database", which SQLAlchemy reports as a disconnect
(``DBAPIError.connection_invalidated``) just as it does a terminated backend.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import make_url, text

import taskdb
from taskdb import StorageError
from taskdb.cache import BlobStore, SqlTaskOutputRepository
from taskdb.core.jobs import ChangeKind, Claim, JobOptions, JobStatus, NewJob
from taskdb.core.retry import Complete
from taskdb.store.feed import ChangeFeed
from taskdb.store.jobs import JobStore
from taskdb.store.rates import RateWindow
from taskdb.store.stats import collect_stats
from taskdb.store.streams import StreamStore
from taskdb.streams import BinaryDelta, TextDelta
from tests.conftest import PG_ADMIN_URL
from tests.helpers import eventually

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
OPTIONS = JobOptions(run_after=T0, max_retries=0)


async def drop_connections(db: taskdb.Database) -> None:
    """Kill every connection pooled under ``db`` behind its back (as a database
    restart would), leaving them in their pools; fails unless at least one was live."""
    if db.dialect == "postgresql":
        await _terminate_backends(str(make_url(db.safe_url).database))
    else:
        _close_sqlite_connections(db)


async def _terminate_backends(database: str) -> None:
    async with await psycopg.AsyncConnection.connect(PG_ADMIN_URL, autocommit=True) as admin:
        # pg_terminate_backend in the select list: it runs only on the rows WHERE keeps.
        cur = await admin.execute(
            "SELECT pid, pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid()",
            (database,),
        )
        pids = [pid for pid, _ in await cur.fetchall()]
        assert pids, f"no connection to {database} to terminate"

        async def alive() -> int:
            cur = await admin.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)", (pids,)
            )
            row = await cur.fetchone()
            return int(row[0]) if row else 0

        await eventually(alive, lambda n: n == 0)


def _close_sqlite_connections(db: taskdb.Database) -> None:
    engines = [e.sync_engine for e in db._engines.values()]
    engines += getattr(db, "_sync_engines", {}).values()  # a sync client's pools, if any
    closed = 0
    for engine in engines:
        pool = engine.pool
        # QueuePool keeps its checked-in connections in a queue with no public view:
        # take them all out, close each, and put them back in the same order.
        idle = pool._pool  # type: ignore[attr-defined]
        records = [idle.get_nowait() for _ in range(idle.qsize())]
        try:
            for record in records:
                driver = record.driver_connection
                if driver is None:  # already invalidated: it reconnects on checkout
                    continue
                # aiosqlite runs a sqlite3 connection in a thread of its own (opened
                # with check_same_thread=False by SQLAlchemy for a file database).
                raw = driver if isinstance(driver, sqlite3.Connection) else driver._conn
                raw.close()
                closed += 1
        finally:
            for record in records:
                idle.put_nowait(record)
    assert closed, "no pooled SQLite connection to close"


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


# -- the helper really breaks the pool ---------------------------------------------------


async def test_a_transaction_on_a_dropped_connection(db: taskdb.Database) -> None:
    """SQLite: without the policy (a bare transaction) the dead connection reaches the
    caller as a retryable StorageError: the store tests below do exercise the retry.
    PostgreSQL: the pool's checkout finds the socket the server closed and connects
    anew before any statement is sent (no error at all)."""
    await JobStore(db).list_jobs()  # the pool now holds a live connection
    if db.dialect == "postgresql":
        async with db.transaction(write=False) as conn:
            before = await conn.scalar(text("SELECT pg_backend_pid()"))
        await drop_connections(db)
        async with db.transaction(write=False) as conn:
            assert await conn.scalar(text("SELECT pg_backend_pid()")) != before
        return
    await drop_connections(db)
    with pytest.raises(StorageError, match="connection lost") as caught:
        async with db.transaction(write=False) as conn:
            await conn.execute(text("SELECT 1"))
    assert caught.value.retryable
    cause = caught.value.__cause__
    assert getattr(cause, "connection_invalidated", False), repr(cause)
    async with db.transaction(write=False) as conn:  # the pool was refreshed
        assert await conn.scalar(text("SELECT 1")) == 1


# -- each store survives a drop between two calls ------------------------------------------


async def test_jobs_submit_claim_finish_across_drops(db: taskdb.Database) -> None:
    store = JobStore(db)
    (first,) = await store.submit("q", OPTIONS, [NewJob.of({"n": 1})], T0)
    await drop_connections(db)
    (second,) = await store.submit("q", OPTIONS, [NewJob.of({"n": 2})], T0)
    assert second > first
    await drop_connections(db)
    claimed = await store.claim("q", "w", 10, T0, 30)
    assert [(j.id, j.input) for j in claimed] == [(first, {"n": 1}), (second, {"n": 2})]
    await drop_connections(db)
    outcomes = [(Claim(j.id, j.attempts), Complete({"done": j.id})) for j in claimed]
    assert await store.finish("w", outcomes, T0) == {
        first: JobStatus.COMPLETED,
        second: JobStatus.COMPLETED,
    }
    await drop_connections(db)
    job = await store.get(second)
    assert (job.status, job.output) == (JobStatus.COMPLETED, {"done": second})


async def test_feed_page_across_a_drop(db: taskdb.Database) -> None:
    ids = await JobStore(db).submit("q", OPTIONS, [NewJob.of({"n": i}) for i in range(3)], T0)
    feed = ChangeFeed(db)
    head = await feed.head()
    await drop_connections(db)
    page = await feed.page(0)
    assert [(c.job_id, c.kind) for c in page.changes] == [(i, ChangeKind.SUBMITTED) for i in ids]
    assert not page.full
    await drop_connections(db)
    assert (await feed.page(head)).changes == []


async def test_blobs_write_and_read_across_drops(db: taskdb.Database) -> None:
    store = BlobStore(db)
    first = await store.write(chunks(b"hello ", b"world"), mime="text/plain")
    await drop_connections(db)
    blob = await store.read(first.key)
    assert blob is not None and (blob.read(), blob.mime) == (b"hello world", "text/plain")
    await drop_connections(db)
    second = await store.write(chunks(b"\x00" * 1000, b"\xff"))  # its first step retried
    assert second.size == 1001
    await drop_connections(db)
    info = await store.info(second.key)
    assert info is not None and (info.state, info.size) == ("committed", 1001)
    blob = await store.read(second.key)
    assert blob is not None and blob.read() == b"\x00" * 1000 + b"\xff"


async def test_streams_append_and_read_across_drops(db: taskdb.Database) -> None:
    jobs, streams = JobStore(db), StreamStore(db)
    options = JobOptions(run_after=T0, max_retries=0, durable_stream=True)
    (job_id,) = await jobs.submit("q", options, [NewJob.of({})], T0)
    (job,) = await jobs.claim("q", "w", 1, T0, 30)
    assert await streams.append(job_id, job.attempts, "w", 0, [TextDelta("t", "a")])
    await drop_connections(db)
    assert await streams.append(job_id, job.attempts, "w", 1, [BinaryDelta("b", b"\x01")])
    await drop_connections(db)
    stored = await streams.read(job_id, 0, 10)
    assert [(s.offset, s.event) for s in stored] == [
        (0, TextDelta("t", "a")),
        (1, BinaryDelta("b", b"\x01")),
    ]
    await drop_connections(db)
    assert await streams.next_offset(job_id) == 2


async def test_cache_outputs_across_drops(db: taskdb.Database) -> None:
    repo = SqlTaskOutputRepository(db)
    await repo.save_output("t", {"x": 1}, {"y": 2})
    await drop_connections(db)
    assert await repo.get_output("t", {"x": 1}) == {"y": 2}
    await drop_connections(db)
    await repo.save_output("t", {"x": 2}, {"y": 3})
    assert await repo.size() == 2


async def test_cache_output_streams_across_drops(db: taskdb.Database) -> None:
    repo = SqlTaskOutputRepository(db)
    assert repo.save_output_stream is not None and repo.get_output_by_ref is not None
    ref = await repo.save_output_stream("t", {}, "img", chunks(b"png", b"bytes"), mime="image/png")
    await drop_connections(db)
    blob = await repo.get_output_by_ref(ref)
    assert blob is not None and (blob.read(), blob.mime) == (b"pngbytes", "image/png")
    await drop_connections(db)
    again = await repo.save_output_stream("t", {}, "img", chunks(b"more"))
    blob = await repo.get_output_by_ref(again)
    assert blob is not None and blob.read() == b"more"


async def test_rate_window_take_across_a_drop(db: taskdb.Database) -> None:
    window = RateWindow(db)
    taken, _ = await window.take("q", 2, 3, 10, T0)
    assert len(taken) == 2
    await drop_connections(db)
    more, next_free = await window.take("q", 2, 3, 10, T0 + timedelta(seconds=1))
    assert len(more) == 1 and next_free == T0 + timedelta(seconds=10)


async def test_collect_stats_across_a_drop(db: taskdb.Database) -> None:
    await JobStore(db).submit("q", OPTIONS, [NewJob.of({"n": i}) for i in range(2)], T0)
    assert (await collect_stats(db, T0)).queues[0].counts == {"PENDING": 2}
    await drop_connections(db)
    stats = await collect_stats(db, T0 + timedelta(seconds=5))
    (queue,) = stats.queues
    assert (queue.queue, queue.counts, queue.oldest_pending_seconds) == ("q", {"PENDING": 2}, 5.0)


# -- one retry only --------------------------------------------------------------------


@contextmanager
def unreachable(db: taskdb.Database) -> Iterator[None]:
    """While inside, no new connection to ``db`` can be opened: PostgreSQL refuses
    connections to the database; the SQLite file's directory is moved away."""
    url = make_url(db.safe_url)
    if db.dialect == "postgresql":
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'ALTER DATABASE "{url.database}" ALLOW_CONNECTIONS false')
            try:
                yield
            finally:
                admin.execute(f'ALTER DATABASE "{url.database}" ALLOW_CONNECTIONS true')
        return
    folder = Path(str(url.database)).parent
    away = folder.with_name(folder.name + "-away")
    folder.rename(away)
    try:
        yield
    finally:
        away.rename(folder)


async def test_a_database_that_stays_down_fails_the_call(db: taskdb.Database) -> None:
    """The policy retries once: when the retry cannot connect either, the caller gets
    the retry's StorageError (the first attempt's was "connection lost"); once the
    database is back, the next call works."""
    store = JobStore(db)
    (job_id,) = await store.submit("q", OPTIONS, [NewJob.of({})], T0)
    with unreachable(db):
        await drop_connections(db)
        with pytest.raises(StorageError, match="unavailable"):
            await store.get(job_id)
    assert (await store.get(job_id)).status is JobStatus.PENDING
