"""An App opens its database on first use, whichever use comes first."""

from __future__ import annotations

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
