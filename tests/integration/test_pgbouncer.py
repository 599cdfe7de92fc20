"""Through PgBouncer in transaction mode: the settings the README advises, and what
happens without a direct LISTEN connection (waits fall back to polling)."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import make_url

import taskdb
from taskdb import JobContext, JobQueueClient, JobQueueServer
from tests.conftest import pooled_db_url
from tests.pgserver import PgBouncer


async def _double(value: Any, ctx: JobContext) -> Any:
    return value * 2


@pytest.fixture
def bounced_url(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    return pooled_db_url(request, monkeypatch, "pgbouncer")


async def test_listen_goes_to_the_direct_url(bounced_url: str, fresh_pg_url: str) -> None:
    db = taskdb.connect(bounced_url, listen_url=fresh_pg_url)
    listener = db.listener()
    assert listener is not None
    client = JobQueueClient(db, "q", poll_interval=30)  # a wake-up can only be a NOTIFY
    async with JobQueueServer(db, "q", _double, poll_interval=30):
        await listener.listening()
        handle = await client.submit(21)
        assert await handle.wait(timeout=10) == 42
    await db.aclose()


async def test_without_a_listen_url_waits_poll(
    bounced_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TASKDB_LISTEN_URL")
    db = taskdb.connect(bounced_url)  # LISTEN through PgBouncer: no NOTIFY ever arrives
    client = JobQueueClient(db, "q", poll_interval=0.05)
    async with JobQueueServer(db, "q", _double, poll_interval=0.05):
        handles = await client.submit_batch(list(range(20)))
        assert [await h.wait(timeout=20) for h in handles] == [2 * i for i in range(20)]
    await db.aclose()


def test_bad_options_are_one_clear_error(pgbouncer: PgBouncer) -> None:
    with pytest.raises(taskdb.ConfigurationError, match="prepare_threshold"):
        taskdb.connect(pgbouncer.url("x") + "?prepare_threshold=sometimes")
    with pytest.raises(taskdb.ConfigurationError, match="LISTEN URL"):
        taskdb.connect(pgbouncer.url("x"), listen_url="sqlite:///x.sqlite3")
    db = taskdb.connect(pgbouncer.url("x") + "?prepare_threshold=0", listen_url=None)
    assert make_url(db.safe_url).query == {"prepare_threshold": "0"}
