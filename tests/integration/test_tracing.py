"""OpenTelemetry: a submit's span and its runs' spans form one trace, through the
trace context stored on the job (both dialects, a real in-process server)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult
from opentelemetry.trace import Link, SpanKind, StatusCode
from opentelemetry.util.types import Attributes

import taskdb
from taskdb import JobContext, JobQueueClient, RetryPolicy, SyncJobQueueClient
from tests.cli.helpers import invoke


class _Switch(Sampler):
    """Samples only while a test of this module runs: the provider is process-global,
    and the rest of the suite must see non-recording spans (nothing stored)."""

    on = False

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: Any = None,
    ) -> SamplingResult:
        decision = Decision.RECORD_AND_SAMPLE if self.on else Decision.DROP
        return SamplingResult(decision, attributes)  # the span's attributes come from here

    def get_description(self) -> str:
        return "taskdb test switch"


_SWITCH = _Switch()
_EXPORTER = InMemorySpanExporter()


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        provider = TracerProvider(sampler=_SWITCH)
        provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
        trace.set_tracer_provider(provider)
    _EXPORTER.clear()
    _SWITCH.on = True
    try:
        yield _EXPORTER
    finally:
        _SWITCH.on = False
        _EXPORTER.clear()


def _named(exporter: InMemorySpanExporter, prefix: str) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name.startswith(prefix)]


async def _until(exporter: InMemorySpanExporter, prefix: str, count: int) -> list[ReadableSpan]:
    for _ in range(500):
        found = _named(exporter, prefix)
        if len(found) >= count:
            return found
        await asyncio.sleep(0.01)
    raise AssertionError(f"{count} {prefix!r} spans never finished: {_named(exporter, prefix)}")


async def test_run_span_is_a_child_of_the_submit_span(
    db: taskdb.Database, client: JobQueueClient, serve: Any, spans: InMemorySpanExporter
) -> None:
    async def double(value: Any, ctx: JobContext) -> Any:
        with trace.get_tracer("handler").start_as_current_span("inside the handler"):
            return value * 2

    # The server starts outside the request span: the run can only find its parent
    # through the context stored on the job.
    await serve(double)
    tracer = trace.get_tracer("web")
    with tracer.start_as_current_span("POST /videos") as request:
        (handle,) = await client.submit_batch([21], task="videos.double")
    assert await handle.wait(timeout=10) == 42

    (submit,) = _named(spans, "taskdb submit")
    (run,) = await _until(spans, "taskdb run", 1)
    (inner,) = _named(spans, "inside the handler")
    trace_id = request.get_span_context().trace_id
    assert submit.context.trace_id == run.context.trace_id == inner.context.trace_id == trace_id
    assert submit.parent is not None and submit.parent.span_id == request.get_span_context().span_id
    assert run.parent is not None and run.parent.span_id == submit.context.span_id
    assert inner.parent is not None and inner.parent.span_id == run.context.span_id
    assert submit.kind is SpanKind.PRODUCER and run.kind is SpanKind.CONSUMER
    assert submit.name == "taskdb submit q" and run.name == "taskdb run q"
    assert dict(submit.attributes or {}) == {
        "taskdb.queue": "q",
        "taskdb.jobs": 1,
        "taskdb.task": "videos.double",
    }
    assert dict(run.attributes or {}) == {
        "taskdb.queue": "q",
        "taskdb.job_id": handle.id,
        "taskdb.attempt": 1,
        "taskdb.task": "videos.double",
        "taskdb.outcome": "completed",
    }
    job = await client.get(handle.id)
    assert job.trace_context is not None
    assert job.trace_context["traceparent"].split("-")[1] == f"{trace_id:032x}"


async def test_each_attempt_is_a_span_with_its_outcome(
    client: JobQueueClient, serve: Any, spans: InMemorySpanExporter
) -> None:
    async def flaky(value: Any, ctx: JobContext) -> Any:
        if ctx.job.attempts < 3:
            raise ValueError(f"attempt {ctx.job.attempts} broke")
        raise KeyError("still broken")

    await serve(flaky, retry=RetryPolicy(base_seconds=0.0, jitter=0.0))
    with trace.get_tracer("web").start_as_current_span("request"):
        handle = await client.submit("x", max_retries=2)
    with pytest.raises(taskdb.JobError):
        await handle.wait(timeout=10)
    runs = sorted(await _until(spans, "taskdb run", 3), key=lambda s: s.start_time or 0)
    (submit,) = _named(spans, "taskdb submit")
    assert [s.attributes["taskdb.attempt"] for s in runs if s.attributes] == [1, 2, 3]
    assert [s.attributes["taskdb.outcome"] for s in runs if s.attributes] == [
        "retry",
        "retry",
        "failed",
    ]
    assert all(s.parent and s.parent.span_id == submit.context.span_id for s in runs)
    assert all(s.status.status_code is StatusCode.ERROR for s in runs)
    assert runs[0].status.description == "attempt 1 broke"
    assert runs[2].attributes and runs[2].attributes["taskdb.error_code"] == "KeyError"


async def test_a_batch_is_one_submit_span(
    client: JobQueueClient, spans: InMemorySpanExporter
) -> None:
    handles = await client.submit_batch(list(range(5)))
    (submit,) = _named(spans, "taskdb submit")
    assert submit.attributes and submit.attributes["taskdb.jobs"] == 5
    contexts = {str((await client.get(h.id)).trace_context) for h in handles}
    assert len(contexts) == 1 and "traceparent" in contexts.pop()


async def test_sync_client_stores_the_context_too(
    db: taskdb.Database, db_url: str, spans: InMemorySpanExporter
) -> None:
    def submit() -> int:
        sync = SyncJobQueueClient(db, "q")
        with trace.get_tracer("web").start_as_current_span("flask view"):
            return sync.submit({"n": 1}).id

    job_id = await asyncio.to_thread(submit)
    (submit_span,) = _named(spans, "taskdb submit")
    job = await JobQueueClient(db, "q").get(job_id)
    assert job.trace_context is not None
    assert f"{submit_span.context.span_id:016x}" in job.trace_context["traceparent"]
    shown = await asyncio.to_thread(invoke, "job", "show", str(job_id), "--db", db_url)
    assert f"{submit_span.context.trace_id:032x}" in shown.output


async def test_nothing_is_stored_without_a_recording_span(
    client: JobQueueClient, serve: Any, spans: InMemorySpanExporter
) -> None:
    _SWITCH.on = False  # the application samples nothing (or configured no provider)

    async def echo(value: Any, ctx: JobContext) -> Any:
        return value

    await serve(echo)
    handle = await client.submit("plain")
    assert await handle.wait(timeout=10) == "plain"
    assert (await client.get(handle.id)).trace_context is None
    assert spans.get_finished_spans() == ()
