"""An App opens its database on first use, whichever use comes first, and closes
only a database it opened."""

from __future__ import annotations

import asyncio

import pytest

import taskdb


@pytest.mark.parametrize("how", ["url", "env"])
def test_a_sync_defer_can_be_the_first_use(
    db_url: str, how: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if how == "env":
        monkeypatch.setenv("TASKDB_URL", db_url)
    app = taskdb.App(db_url if how == "url" else None)

    @app.task(name="opening.echo")
    def echo(x: int) -> int:
        return x

    # sync_client once held the App's lock while opening the database took it: a deadlock
    handle = echo.defer(x=1)
    try:
        job = handle.get()
        assert (job.status, job.task, job.input) == (
            taskdb.JobStatus.PENDING,
            "opening.echo",
            {"x": 1},
        )
    finally:
        app.db.close()


async def test_close_closes_only_a_database_the_app_opened(
    db_url: str, db: taskdb.Database
) -> None:
    opened = taskdb.App(db_url)
    first = opened.db
    await opened.aclose()
    assert opened.db is not first  # a later use opens it again
    with pytest.raises(taskdb.TaskdbError, match="aclose"):
        opened.close()  # not from a running loop, and the database is kept
    await asyncio.to_thread(opened.close)

    given = taskdb.App(db=db)
    await given.aclose()
    await asyncio.to_thread(given.close)
    assert given.db is db
    assert await taskdb.JobQueueClient(db, "q").submit(1)  # still open
