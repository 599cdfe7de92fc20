"""PostgreSQL sessions run in UTC whatever the server's or database's TimeZone, so
every timestamp taskdb reads comes back in ``datetime.UTC`` (the claim's rows skip
the conversion on that promise), through the worker's claim and the client alike."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from sqlalchemy.engine import make_url

import taskdb
from tests.conftest import PG_ADMIN_URL


@pytest.fixture
def kolkata_pg_url(fresh_pg_url: str) -> Iterator[str]:
    """A fresh database whose sessions default to Asia/Kolkata (+05:30)."""
    name = make_url(fresh_pg_url).database
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f"ALTER DATABASE \"{name}\" SET TimeZone = 'Asia/Kolkata'")
    with psycopg.connect(fresh_pg_url.replace("+psycopg", "")) as conn:
        assert conn.execute("SHOW TimeZone").fetchone() == ("Asia/Kolkata",)
    yield fresh_pg_url


async def test_timestamps_come_back_in_utc(kolkata_pg_url: str) -> None:
    db = taskdb.connect(kolkata_pg_url)
    try:
        client = taskdb.JobQueueClient(db, "q", poll_interval=0.02)
        before = datetime.now(UTC)
        handle = await client.submit("x")
        seen: list[datetime] = []

        async def handler(value: Any, ctx: taskdb.JobContext) -> Any:
            job = ctx.job
            seen.extend([job.created_at, job.run_after, job.updated_at])
            assert job.lease_expires_at is not None
            seen.append(job.lease_expires_at)
            return value

        async with taskdb.JobQueueServer(db, "q", handler, poll_interval=0.02):
            assert await handle.wait(timeout=30) == "x"
        stored = await client.get(handle.id)
        assert stored.completed_at is not None
        seen.extend([stored.created_at, stored.completed_at])
        assert all(t.tzinfo is UTC for t in seen), [t.tzinfo for t in seen]
        assert stored.created_at == seen[0]
        assert before <= stored.created_at <= stored.completed_at <= datetime.now(UTC)
    finally:
        await db.aclose()
