"""What an operator sees of a failing handler: a log record with the traceback for
every failed attempt, and the last traceback on the job row."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

import taskdb
from taskdb import JobContext, JobQueueClient, JobStatus, RetryPolicy
from tests.cli.helpers import invoke, run_job


def _parse(value: str) -> int:
    return int(value)  # a frame the traceback must show


async def boom(value: Any, ctx: JobContext) -> Any:
    return _parse(value["n"])


async def test_a_failing_handler_logs_each_attempt_and_keeps_the_traceback(
    db: taskdb.Database, client: JobQueueClient, serve: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="taskdb")
    await serve(boom, retry=RetryPolicy(base_seconds=0, jitter=0))
    handle = await client.submit({"n": "not a number"}, max_retries=1)
    with pytest.raises(taskdb.JobError, match="invalid literal"):
        await handle.wait(timeout=10)
    failures = [r for r in caplog.records if r.name == "taskdb.server" and r.exc_info]
    assert [r.levelno for r in failures] == [logging.WARNING, logging.ERROR]  # retried, then final
    for attempt, record in enumerate(failures, start=1):
        assert record.job_id == handle.id and record.queue == "q"  # type: ignore[attr-defined]
        assert record.attempt == attempt  # type: ignore[attr-defined]
        assert f"job {handle.id}" in record.getMessage() and "ValueError" in record.getMessage()
    job = await handle.get()
    assert job.status is JobStatus.FAILED and job.error_code == "ValueError"
    assert job.error_traceback is not None
    assert "in _parse" in job.error_traceback
    assert job.error_traceback.endswith(
        "ValueError: invalid literal for int() with base 10: 'not a number'"
    )


def test_the_cli_shows_the_traceback(db_url: str) -> None:
    job_id = run_job(db_url, boom, {"n": "x"}, max_retries=0)
    shown = invoke("job", "show", str(job_id), "--db", db_url)
    stored = json.loads(invoke("job", "show", str(job_id), "--db", db_url, "--json").output)
    # every line whole, as stored: not wrapped or cut by the table
    assert stored["error_traceback"] in shown.output, shown.output
    assert "in _parse" in shown.output
    listed = invoke("jobs", "--db", db_url)
    assert "invalid" in listed.output and "Traceback" not in listed.output  # one line
