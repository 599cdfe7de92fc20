"""A job id is never handed out twice, even after the newest jobs were purged (both
dialects), so a job's change-feed history is its own; and migration 0011 turns an
existing SQLite table into one that never reuses ids, keeping its rows and indexes."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import taskdb
from taskdb import ChangeKind
from taskdb.store.feed import ChangeFeed
from tests.helpers import FakeClock


async def test_a_purged_jobs_id_is_not_reused(db: taskdb.Database) -> None:
    clock = FakeClock(datetime.now(UTC))
    client = taskdb.JobQueueClient(db, "q", poll_interval=0.02)
    first = await client.submit("first")

    async def echo(value: Any, ctx: taskdb.JobContext) -> Any:
        return value

    async with taskdb.JobQueueServer(db, "q", echo, poll_interval=0.02):
        assert await first.wait(timeout=10) == "first"
    clock.advance(3600)
    assert await taskdb.Admin(db, clock=clock).purge_jobs(timedelta(minutes=1)) == 1
    second = await client.submit("second")
    assert second.id > first.id
    history = await ChangeFeed(db).changes(0, job_id=second.id)
    assert [c.kind for c in history] == [ChangeKind.SUBMITTED]  # not the purged job's


def test_migration_0011_keeps_rows_and_starts_above_every_known_id(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    db = taskdb.connect(f"sqlite:///{path}")
    db.migrate("0010")
    db.close()
    conn = sqlite3.connect(path)
    now = "2026-01-01 00:00:00.000000"
    for job_id in (1, 2):
        conn.execute(
            "INSERT INTO taskdb_jobs (id, queue, status, input, input_digest, max_retries, "
            "run_after, created_at, updated_at) VALUES (?, 'q', 'PENDING', '{}', 'd', 0, ?, ?, ?)",
            (job_id, now, now, now),
        )
    # job 7 was purged long ago: only the feed remembers it
    conn.execute(
        "INSERT INTO taskdb_job_changes (job_id, queue, kind, status, attempts, at) "
        "VALUES (7, 'q', 'submitted', 'PENDING', 0, ?)",
        (now,),
    )
    conn.commit()
    indexes = sorted(
        conn.execute("SELECT sql FROM sqlite_master WHERE type='index' AND tbl_name='taskdb_jobs'")
    )
    conn.close()

    db = taskdb.connect(f"sqlite:///{path}")
    db.migrate("0011")  # (a later revision changes another index)
    db.close()
    conn = sqlite3.connect(path)
    try:
        create = conn.execute(
            "SELECT sql FROM sqlite_master WHERE type='table' AND name='taskdb_jobs'"
        ).fetchone()[0]
        assert "AUTOINCREMENT" in create
        assert [r[0] for r in conn.execute("SELECT id FROM taskdb_jobs ORDER BY id")] == [1, 2]
        assert (
            sorted(
                conn.execute(
                    "SELECT sql FROM sqlite_master WHERE type='index' AND tbl_name='taskdb_jobs'"
                )
            )
            == indexes
        )
        conn.execute(
            "INSERT INTO taskdb_jobs (queue, status, input, input_digest, max_retries, "
            "run_after, created_at, updated_at) VALUES ('q', 'PENDING', '{}', 'd', 0, ?, ?, ?)",
            (now, now, now),
        )
        assert conn.execute("SELECT max(id) FROM taskdb_jobs").fetchone()[0] == 8
    finally:
        conn.close()
