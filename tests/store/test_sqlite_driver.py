"""SQLite's driver-level writes (:mod:`taskdb.store.sqlite`): the queue's recorded
writes run on the sqlite3 connection beneath the pool, a whole transaction in one
call in its thread. Real SQLite files, nothing mocked: what they store and return
is what SQLAlchemy's path stores and returns, and every guarantee of a transaction
(the write lock up front, rollback, errors) holds."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

import taskdb
from taskdb.core.jobs import ChangeKind, Claim, JobOptions, JobStatus, NewJob
from taskdb.core.retry import Complete, Fail, Retry
from taskdb.errors import InvalidJobInput, StorageError
from taskdb.store import sqlite as dialect
from taskdb.store.feed import ChangeFeed
from taskdb.store.jobs import JobStore
from taskdb.store.schema import SQLITE_TIME_FORMAT, jobs
from taskdb.store.statements import job_statements

T0 = datetime(2026, 1, 1, 12, 0, 0, 123456, tzinfo=UTC)
Q = "q"
OPTIONS = JobOptions(run_after=T0, max_retries=3)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


@pytest.fixture
def path(fresh_sqlite_url: str) -> Path:
    return Path(fresh_sqlite_url.removeprefix("sqlite:///"))


@pytest.fixture
async def db(fresh_sqlite_url: str) -> AsyncIterator[taskdb.Database]:
    database = taskdb.connect(fresh_sqlite_url)
    yield database
    await database.aclose()


@pytest.fixture
def store(db: taskdb.Database) -> JobStore:
    return JobStore(db)


@pytest.fixture
def other(path: Path) -> Iterator[sqlite3.Connection]:
    """A connection of another process's kind (plain sqlite3, autocommit)."""
    conn = sqlite3.connect(path, isolation_level=None, timeout=5)
    yield conn
    conn.close()


async def submit(store: JobStore, count: int) -> list[int]:
    return await store.submit(Q, OPTIONS, [NewJob.of({"i": i}) for i in range(count)], T0)


def stored_times(conn: sqlite3.Connection, job_id: int) -> dict[str, str | None]:
    cols = ("run_after", "lease_expires_at", "updated_at", "completed_at")
    row = conn.execute(f"SELECT {', '.join(cols)} FROM taskdb_jobs WHERE id = ?", (job_id,))
    return dict(zip(cols, row.fetchone(), strict=True))


async def test_claimed_rows_are_the_rows_sqlalchemy_reads(
    store: JobStore, other: sqlite3.Connection
) -> None:
    ids = await submit(store, 3)
    claimed = await store.claim_rows(Q, "w", 2, at(1), 30)
    assert [r.id for r in claimed] == ids[:2]
    async with store.db.transaction(write=False) as conn:
        read = (await conn.execute(select(jobs).where(jobs.c.id.in_(ids[:2])))).all()
    by_id = {r.id: r._asdict() for r in read}
    for row in claimed:
        assert row._asdict() == by_id[row.id]  # same values, same Python types
        assert row.lease_expires_at == at(31) and row.lease_expires_at.tzinfo is UTC
        assert row.input == {"i": ids.index(row.id)} and row.durable_stream is False
    # the one fixed text format of UtcDateTime (text order is time order)
    assert stored_times(other, ids[0]) == {
        "run_after": T0.strftime(SQLITE_TIME_FORMAT),
        "lease_expires_at": at(31).strftime(SQLITE_TIME_FORMAT),
        "updated_at": at(1).strftime(SQLITE_TIME_FORMAT),
        "completed_at": None,
    }


async def test_outcomes_and_claims_write_one_transaction_with_their_changes(
    store: JobStore, other: sqlite3.Connection
) -> None:
    ids = await submit(store, 5)
    a, b, c = await store.claim_rows(Q, "w", 3, at(1), 30)
    outcomes = [
        (Claim(a.id, 1), Complete({"out": [1, "two"]})),
        (Claim(b.id, 1), Retry(at(60), "again", "RetryableJobError")),
        (Claim(c.id, 1), Fail("boom", "ValueError", "Traceback ...")),
        (Claim(ids[4], 1), Complete("not claimed by w: fenced off")),
        (Claim(a.id, 2), Complete("an attempt w does not hold: fenced off")),
    ]
    statuses, claimed = await store.finish_and_claim(
        "w", outcomes, at(2), queue=Q, limit=1, lease_seconds=30
    )
    assert statuses == {a.id: JobStatus.COMPLETED, b.id: JobStatus.PENDING, c.id: JobStatus.FAILED}
    assert [r.id for r in claimed] == [ids[3]]
    done = {j.id: j for j in await store.list_jobs(queue=Q)}
    assert done[a.id].output == {"out": [1, "two"]} and done[a.id].completed_at == at(2)
    assert (done[b.id].run_after, done[b.id].error_code) == (at(60), "RetryableJobError")
    assert (done[c.id].error, done[c.id].error_traceback) == ("boom", "Traceback ...")
    assert stored_times(other, a.id)["completed_at"] == at(2).strftime(SQLITE_TIME_FORMAT)
    assert stored_times(other, b.id)["run_after"] == at(60).strftime(SQLITE_TIME_FORMAT)
    changes = [(ch.job_id, ch.kind) for ch in await ChangeFeed(store.db).changes(0)]
    assert changes[5:8] == [(i, ChangeKind.CLAIMED) for i in ids[:3]]
    # claims first (as one statement's snapshot would), then the outcomes
    assert changes[8:] == [
        (ids[3], ChangeKind.CLAIMED),
        (a.id, ChangeKind.COMPLETED),
        (b.id, ChangeKind.RETRIED),
        (c.id, ChangeKind.FAILED),
    ]


async def test_a_cancelled_transaction_rolls_back(
    store: JobStore, other: sqlite3.Connection
) -> None:
    await submit(store, 2)
    claim = job_statements(store.db.backend).claim
    values = store._claim_values(Q, "cancelled", 2, at(1), 30)
    other.execute("BEGIN IMMEDIATE")  # the claim waits for the write lock in its thread
    backend = store.db.backend
    assert isinstance(backend, dialect.SqliteDialect)
    async with store.db.connection() as conn:
        write = backend._write(claim, conn.dialect)
        task = asyncio.ensure_future(dialect._run_transaction(conn, "db", [(write, values)]))
        await asyncio.sleep(0)  # its call is queued to the connection's thread
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        other.execute("COMMIT")
        # the connection's calls run in order: this one runs after the cancelled one
        assert await dialect._on_thread(conn, "db", lambda raw: raw.in_transaction) is False
    found = other.execute("SELECT status, worker_id, attempts FROM taskdb_jobs").fetchall()
    assert found == [("PENDING", None, 0)] * 2
    kinds = [ch.kind for ch in await ChangeFeed(store.db).changes(0)]
    assert kinds == [ChangeKind.SUBMITTED] * 2


async def test_a_connection_returned_inside_a_transaction_is_rolled_back(
    db: taskdb.Database, path: Path
) -> None:
    async with db.connection() as conn:
        await dialect._on_thread(conn, "db", lambda raw: raw.execute("BEGIN IMMEDIATE"))
    # the pool's reset released the write lock: another writer takes it at once
    hurried = sqlite3.connect(path, isolation_level=None, timeout=0)
    try:
        hurried.execute("BEGIN IMMEDIATE")
        hurried.execute("ROLLBACK")
    finally:
        hurried.close()


async def test_a_held_write_lock_is_a_storage_error_after_the_busy_timeout(
    fresh_sqlite_url: str, other: sqlite3.Connection
) -> None:
    db = taskdb.connect(fresh_sqlite_url, sqlite_busy_timeout=0.05)
    try:
        store = JobStore(db)
        await submit(store, 1)
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(StorageError, match="database is locked") as caught:
            await store.claim_rows(Q, "w", 1, at(1), 30)
        assert not caught.value.retryable and not caught.value.unavailable
        other.execute("ROLLBACK")
        assert len(await store.claim_rows(Q, "w", 1, at(1), 30)) == 1  # nothing left over
    finally:
        await db.aclose()


async def test_bad_values_are_invalid_job_input_and_write_nothing(store: JobStore) -> None:
    (job_id,) = await submit(store, 1)
    with pytest.raises(InvalidJobInput, match="naive datetime"):
        await store.claim_rows(Q, "w", 1, datetime(2026, 1, 1, 12), 30)
    (row,) = await store.claim_rows(Q, "w", 1, at(1), 30)
    for output in (object(), {"at": at(2)}):  # times are JSON in a batch, not in an output
        with pytest.raises(InvalidJobInput, match="not JSON"):
            await store.finish("w", [(Claim(job_id, 1), Complete(output))], at(2))
    with pytest.raises(InvalidJobInput, match="naive datetime"):
        await store.finish_and_claim(
            "w",
            [(Claim(job_id, 1), Complete(None))],
            datetime(2026, 1, 1, 12),
            queue=Q,
            limit=1,
            lease_seconds=30,
        )
    assert (await store.get(row.id)).status is JobStatus.PROCESSING
