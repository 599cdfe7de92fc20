"""Optional OpenTelemetry spans: one per submit, one per attempt, in one trace.

With ``opentelemetry-api`` installed (``pip install taskdb[tracing]``) and a
tracer provider configured by the application, a submit (or ``defer``) opens a
``taskdb submit <queue>`` span and stores its W3C trace context on the jobs it
writes; the worker runs each attempt in a ``taskdb run <queue>`` span whose
parent is that stored context, so one trace shows the web request that
enqueued a job and every run that executed it. Without the package or a
configured provider these calls cost a fraction of a microsecond; with a sampler
that drops the submit span, nothing is stored on the jobs.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from taskdb.core.retry import Complete, Outcome, Retry

try:
    from opentelemetry import propagate, trace
    from opentelemetry.trace import SpanKind, Status, StatusCode
except ImportError:  # the optional extra is absent: every call is a no-op
    trace = None  # type: ignore[assignment]

NoteOutcome = Callable[[Outcome | None], None]

log = logging.getLogger("taskdb.tracing")

_TRACER = "taskdb"


def _tracer() -> Any:
    """The tracer of the application's provider; ``None`` when no provider is set (the
    API's proxy, or its no-op one), so an unconfigured worker pays no span per job."""
    if trace is None:
        return None
    # get_tracer_provider() reads os.environ on every call until a provider is set
    # (several µs a job); the module global it guards says the same for free.
    if getattr(trace, "_TRACER_PROVIDER", False) is None:
        return None
    provider = trace.get_tracer_provider()
    if isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider):
        return None
    return provider.get_tracer(_TRACER)


_UNTRACED: AbstractContextManager[None] = nullcontext()


def submit_span(queue: str, count: int, task: str | None) -> AbstractContextManager[Any]:
    """A span around a submit of ``count`` jobs; the context manager gives the trace
    context to store on them (``None``: nothing is traced)."""
    tracer = _tracer()
    if tracer is None:
        return _UNTRACED
    return _submit_span(tracer, queue, count, task)


@contextlib.contextmanager
def _submit_span(
    tracer: Any, queue: str, count: int, task: str | None
) -> Iterator[dict[str, str] | None]:
    attributes: dict[str, Any] = {"taskdb.queue": queue, "taskdb.jobs": count}
    if task is not None:
        attributes["taskdb.task"] = task
    with tracer.start_as_current_span(
        f"taskdb submit {queue}", kind=SpanKind.PRODUCER, attributes=attributes
    ) as span:
        if not span.is_recording():
            yield None
            return
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        yield carrier or None


def _ignore(outcome: Outcome | None) -> None:
    pass


_NOT_NOTED: AbstractContextManager[NoteOutcome] = nullcontext(_ignore)


def attempt_span(job: Any) -> AbstractContextManager[NoteOutcome]:
    """A span around one attempt of a claimed ``job``, a child of the trace context
    stored on it when it was submitted. The context manager gives a function to
    call with the attempt's outcome (``None``: nothing is written, e.g. the lease
    was lost), which it sets on the span: ``taskdb.outcome`` and an error status."""
    tracer = _tracer()
    if tracer is None:
        return _NOT_NOTED
    return _attempt_span(tracer, job)


def _parent_of(carrier: Any) -> Any:
    """The trace context stored on a job; ``None`` (a new trace) for a missing or
    malformed one: a bad row must never keep its job from running."""
    if not isinstance(carrier, dict):
        return None
    strings = {k: v for k, v in carrier.items() if isinstance(k, str) and isinstance(v, str)}
    try:
        return propagate.extract(strings)
    except Exception:  # a propagator's own parsing error
        log.warning("ignoring a malformed trace context: %r", carrier)
        return None


@contextlib.contextmanager
def _attempt_span(tracer: Any, job: Any) -> Iterator[NoteOutcome]:
    parent = _parent_of(getattr(job, "trace_context", None))
    attributes: dict[str, Any] = {
        "taskdb.queue": job.queue,
        "taskdb.job_id": job.id,
        "taskdb.attempt": job.attempts,
    }
    task = getattr(job, "task", None)
    if task is not None:
        attributes["taskdb.task"] = task
    with tracer.start_as_current_span(
        f"taskdb run {job.queue}", context=parent, kind=SpanKind.CONSUMER, attributes=attributes
    ) as span:

        def note(outcome: Outcome | None) -> None:
            if outcome is None:
                span.set_attribute("taskdb.outcome", "discarded")
                return
            if isinstance(outcome, Complete):
                span.set_attribute("taskdb.outcome", "completed")
                return
            kind = "retry" if isinstance(outcome, Retry) else "failed"
            span.set_attribute("taskdb.outcome", kind)
            span.set_attribute("taskdb.error_code", outcome.error_code)
            span.set_status(Status(StatusCode.ERROR, outcome.error))

        yield note
