"""A bare number as a job's whole input or output comes back exactly as given on
both dialects (SQLite used to store it through a NUMERIC-affinity column: 1.0
came back 1, 2**63 a float), and migration 0012 turns an existing SQLite
database's JSON columns into TEXT ones, keeping rows, indexes and the id sequence."""

from __future__ import annotations

import math
import sqlite3
from pathlib import Path
from typing import Any

import pytest

import taskdb

BARE_NUMBERS = [1.0, 0.0, 2**63, -(2**63) - 1, 10**100, 1e308, 5e-324, 0.1, 2.0**53 + 2, 7]


def _same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b and math.copysign(1, a) == math.copysign(1, b)


async def test_a_bare_number_round_trips_exactly(db: taskdb.Database) -> None:
    client = taskdb.JobQueueClient(db, "q", poll_interval=0.02)

    async def echo(value: Any, ctx: taskdb.JobContext) -> Any:
        return value

    handles = [await client.submit(value) for value in BARE_NUMBERS]
    async with taskdb.JobQueueServer(db, "q", echo, poll_interval=0.02, workers=4):
        outputs = [await handle.wait(timeout=30) for handle in handles]
    stored = [(await client.get(handle.id)).input for handle in handles]
    for value, output, input_ in zip(BARE_NUMBERS, outputs, stored, strict=True):
        assert _same(output, value), (value, output)
        assert _same(input_, value), (value, input_)


def _declared_types(path: Path) -> dict[str, str]:
    conn = sqlite3.connect(path)
    try:
        return {
            f"{table}.{column[1]}": column[2]
            for (table,) in conn.execute(
                "SELECT name FROM sqlite_master WHERE type='table' AND name LIKE 'taskdb_%'"
            ).fetchall()
            for column in conn.execute(f"PRAGMA table_info({table})")
        }
    finally:
        conn.close()


def test_migration_0012_retypes_json_columns_and_keeps_rows_and_ids(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    db = taskdb.connect(f"sqlite:///{path}")
    db.migrate("0011")
    db.close()
    before = _declared_types(path)
    assert before["taskdb_jobs.input"] == "JSON"
    conn = sqlite3.connect(path)
    now = "2026-01-01 00:00:00.000000"
    for job_id, output in ((1, '{"a": [1.5]}'), (2, None), (9, '"x"')):
        conn.execute(
            "INSERT INTO taskdb_jobs (id, queue, status, input, input_digest, output, "
            "max_retries, run_after, created_at, updated_at) "
            "VALUES (?, 'q', 'COMPLETED', '[1]', 'd', ?, 0, ?, ?, ?)",
            (job_id, output, now, now, now),
        )
    conn.execute("DELETE FROM taskdb_jobs WHERE id = 9")  # purged: its id stays used
    conn.execute(
        'INSERT INTO taskdb_job_streams (job_id, "offset", attempt, event) '
        'VALUES (1, 0, 1, \'{"kind": "text"}\')'
    )
    conn.commit()
    indexes = sorted(conn.execute("SELECT name, sql FROM sqlite_master WHERE type='index'"))
    conn.close()

    db = taskdb.connect(f"sqlite:///{path}")
    db.migrate("0012")  # (a later revision changes another index)
    db.close()
    after = _declared_types(path)
    retyped = {
        "taskdb_jobs.input",
        "taskdb_jobs.output",
        "taskdb_jobs.progress_details",
        "taskdb_jobs.trace_context",
        "taskdb_task_outputs.output",
        "taskdb_job_streams.event",
    }
    assert {name for name in after if after[name] != before.get(name)} == retyped
    assert all(after[name] == "TEXT" for name in retyped)
    conn = sqlite3.connect(path)
    try:
        assert sorted(conn.execute("SELECT name, sql FROM sqlite_master WHERE type='index'")) == (
            indexes
        )
        rows = conn.execute("SELECT id, input, output FROM taskdb_jobs ORDER BY id").fetchall()
        assert rows == [(1, "[1]", '{"a": [1.5]}'), (2, "[1]", None)]
        assert conn.execute("SELECT event FROM taskdb_job_streams").fetchall() == [
            ('{"kind": "text"}',)
        ]
        conn.execute(
            "INSERT INTO taskdb_jobs (queue, status, input, input_digest, max_retries, "
            "run_after, created_at, updated_at) VALUES ('q', 'PENDING', '1.0', 'd', 0, ?, ?, ?)",
            (now, now, now),
        )
        new_id, stored = conn.execute(
            "SELECT id, input FROM taskdb_jobs ORDER BY id DESC LIMIT 1"
        ).fetchone()
        assert (new_id, stored) == (10, "1.0")
    finally:
        conn.close()


@pytest.mark.parametrize("target", ["0011", "base"])
def test_migration_0012_downgrades(tmp_path: Path, target: str) -> None:
    path = tmp_path / "db.sqlite3"
    db = taskdb.connect(f"sqlite:///{path}")
    db.migrate()
    db.downgrade(target)
    if target == "0011":
        assert _declared_types(path)["taskdb_jobs.input"] == "JSON"
    db.migrate()
    assert _declared_types(path)["taskdb_jobs.input"] == "TEXT"
    db.close()
