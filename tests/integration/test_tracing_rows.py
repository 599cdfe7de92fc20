"""Jobs whose stored trace context is malformed still run (a new trace), and an
error in taskdb's own code around an attempt counts as a failed attempt rather
than leaving the job to its lease (both dialects)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from sqlalchemy import text

import taskdb
import taskdb.queue.server as server_module
from taskdb import JobContext, JobQueueClient, JobStatus, RetryPolicy
from tests.helpers import eventually
from tests.integration.test_tracing import spans  # noqa: F401 (the fixture)

BAD_CONTEXTS = [{"traceparent": 5}, "junk", [1, 2], {"traceparent": "00-zz-yy-01"}, {"1": {}}]


async def _echo(value: Any, ctx: JobContext) -> Any:
    return value


@pytest.mark.parametrize("carrier", BAD_CONTEXTS, ids=str)
async def test_a_malformed_trace_context_does_not_keep_a_job_from_running(
    db: taskdb.Database,
    client: JobQueueClient,
    serve: Any,
    spans: InMemorySpanExporter,  # noqa: F811
    carrier: Any,
) -> None:
    handle = await client.submit("ok")
    async with db.transaction() as conn:
        stored = "CAST(:c AS JSONB)" if db.backend.name == "postgresql" else "json(:c)"
        await conn.execute(
            text(f"UPDATE taskdb_jobs SET trace_context = {stored} WHERE id = :id"),
            {"c": json.dumps(carrier), "id": handle.id},
        )
    assert (await client.get(handle.id)).trace_context == carrier  # read leniently
    await serve(_echo)
    assert await handle.wait(timeout=10) == "ok"
    job = await client.get(handle.id)
    assert (job.status, job.attempts) == (JobStatus.COMPLETED, 1)
    run = await eventually(
        lambda: _as_coro([s for s in spans.get_finished_spans() if s.name == "taskdb run q"]),
        bool,
    )
    assert run[0].parent is None  # a trace of its own


async def _as_coro(value: Any) -> Any:
    return value


async def test_an_error_in_taskdb_around_an_attempt_is_a_failed_attempt(
    client: JobQueueClient, serve: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = server_module.attempt_span
    broken = {"left": 1}

    def flaky_span(job: Any) -> Any:
        if broken["left"]:
            broken["left"] -= 1
            raise RuntimeError("broken instrumentation")
        return real(job)

    monkeypatch.setattr(server_module, "attempt_span", flaky_span)
    await serve(_echo, retry=RetryPolicy(base_seconds=0, jitter=0))
    broken_job = await client.submit("first", max_retries=0)
    with pytest.raises(taskdb.JobError, match="broken instrumentation"):
        await broken_job.wait(timeout=4)  # recorded at once, not after the 5 s lease
    job = await client.get(broken_job.id)
    assert (job.status, job.attempts, job.error_code) == (JobStatus.FAILED, 1, "RuntimeError")
    assert job.error_traceback and "in flaky_span" in job.error_traceback
    assert await (await client.submit("next")).wait(timeout=10) == "next"
