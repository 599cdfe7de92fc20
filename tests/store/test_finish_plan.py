"""A batch of outcomes finds its rows by primary key on both databases.

PostgreSQL, whatever the lease index holds: every claim leaves a PROCESSING entry
there that stays, pointing at a dead row version, until vacuum. Joined only to the
batch, the finish statement once scanned them all (12 ms a batch after 40,000 jobs),
so its cost grew with every job a worker ran. Since migration 0013 the lease index
covers rows holding a lease, which only the reaper's ``lease_expires_at < now``
implies, and the statement also names the ids as a list.

SQLite must not get that list: it then looks each row up first and scans the whole
batch for it (a batch of 32 cost four times as much). Nor may a claim or an outcome
batch write to SQLite's input-digest index (migration 0014): its random keys made a
batch dirty a page per job."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime
from typing import Any

import psycopg
from sqlalchemy.dialects.postgresql.psycopg import PGDialectAsync_psycopg
from sqlalchemy.dialects.sqlite.aiosqlite import SQLiteDialect_aiosqlite

import taskdb
from taskdb.core.jobs import Claim
from taskdb.core.retry import Complete
from taskdb.store.driver import DriverStatement
from taskdb.store.jobs import JobStore
from taskdb.store.sqlite import DIALECT as SQLITE

JOBS = 3000


def _buffers(plan: dict[str, Any]) -> int:
    """Shared buffers the plan's nodes touched (each node counts its children's too)."""
    return int(plan["Shared Hit Blocks"]) + int(plan["Shared Read Blocks"])


async def test_finishing_a_batch_reads_few_buffers_however_many_jobs_ran(
    fresh_pg_url: str,
) -> None:
    with psycopg.connect(fresh_pg_url) as conn:  # dead versions stay for this test
        conn.execute("ALTER TABLE taskdb_jobs SET (autovacuum_enabled = false)")
    db = taskdb.connect(fresh_pg_url)
    try:
        client = taskdb.JobQueueClient(db, "q", poll_interval=0.02)
        await client.submit_batch(list(range(JOBS)))
        done = await client.submit_batch(["a", "b"])

        async def noop(value: Any, ctx: taskdb.JobContext) -> None:
            return None

        # run them all (and the two, whose rows the statement will look up)
        async with taskdb.JobQueueServer(db, "q", noop, workers=32, poll_interval=0.02):
            for handle in done:
                await handle.wait(timeout=120)
        store = JobStore(db)
        items = [(Claim(h.id, 1), Complete(None)) for h in done]
        values = store._finish_values("worker", items, datetime.now(UTC))
        statement = DriverStatement.compile(store._s.finish.main, PGDialectAsync_psycopg())
    finally:
        await db.aclose()
    with psycopg.connect(fresh_pg_url) as conn:
        conn.execute("ANALYZE taskdb_jobs")
        with psycopg.RawCursor(conn) as cursor:  # the statement's own $n placeholders
            cursor.execute(
                "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + statement.sql,
                statement.parameters(values),
            )
            row = cursor.fetchone()
        conn.rollback()
    assert row is not None
    plan = (row[0] if isinstance(row[0], list) else json.loads(row[0]))[0]["Plan"]
    # two primary-key lookups (a few versions each) and the feed insert: tens of buffers;
    # scanning the lease index's dead entries read one per heap page of the 3,000 jobs
    assert _buffers(plan) < 60, json.dumps(plan)[:3000]


async def test_sqlite_finishes_a_batch_row_by_row_from_the_batch(fresh_sqlite_url: str) -> None:
    db = taskdb.connect(fresh_sqlite_url)
    try:
        client = taskdb.JobQueueClient(db, "q")
        handles = await client.submit_batch(list(range(32)))
        store = JobStore(db)
        items = [(Claim(h.id, 1), Complete(None)) for h in handles]
        values = store._finish_values("worker", items, datetime.now(UTC))
    finally:
        await db.aclose()
    # the statement as the SQLite driver path compiles and runs it
    statement = SQLITE._write(store._s.finish, SQLiteDialect_aiosqlite()).main
    path = fresh_sqlite_url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as conn:
        plan = [
            row[3]
            for row in conn.execute(
                "EXPLAIN QUERY PLAN " + statement.sql, statement.parameters(values)
            )
        ]
    # the batch is the outer loop and each of its rows is found by primary key; the
    # other way round, each job row scanned the whole batch (and extracted its fields)
    assert plan[0].startswith("SCAN") and "taskdb_jobs" not in plan[0], plan
    assert any(line.startswith("SEARCH taskdb_jobs USING INTEGER PRIMARY KEY") for line in plan), (
        plan
    )


async def test_sqlite_claims_and_outcomes_leave_the_digest_index_alone(
    fresh_sqlite_url: str,
) -> None:
    db = taskdb.connect(fresh_sqlite_url)
    try:
        client = taskdb.JobQueueClient(db, "q")
        handles = await client.submit_batch(list(range(4)))
        store = JobStore(db)
        now = datetime.now(UTC)
        claim = store._claim_values("q", "worker", 4, now, 30)
        items = [(Claim(h.id, 1), Complete(None)) for h in handles]
        finish = store._finish_values("worker", items, now)
    finally:
        await db.aclose()
    dialect = SQLiteDialect_aiosqlite()
    path = fresh_sqlite_url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as conn:
        (root,) = conn.execute(
            "SELECT rootpage FROM sqlite_master WHERE name = 'ix_taskdb_jobs_input_digest'"
        ).fetchone()
        for stmt, values in ((store._s.claim, claim), (store._s.finish, finish)):
            statement = SQLITE._write(stmt, dialect).main
            program = conn.execute("EXPLAIN " + statement.sql, statement.parameters(values))
            # (addr, opcode, p1, p2, ...): OpenWrite's p2 is the b-tree it writes
            written = {row[3] for row in program if row[1] == "OpenWrite"}
            assert written, statement.sql  # the table and its other indexes are
            assert root not in written, statement.sql
