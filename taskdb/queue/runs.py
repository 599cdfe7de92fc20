"""One run of a job: its handler, under the job's deadline, cancellable by the server.

:func:`execute` turns whatever the handler does into an
:class:`~taskdb.core.retry.Outcome` (or ``None`` when nothing must be
written): its output, a failure decided by the retry policy, a deadline
passed, an abort. The server cancels a handler only through
:func:`cancel_handler`, which marks why; any other cancellation is the
server's own shutdown and propagates.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from taskdb.core.clock import Clock
from taskdb.core.jobs import Claim
from taskdb.core.retry import Complete, Fail, Outcome, Retry, RetryPolicy, decide_failure
from taskdb.errors import AbortedJobError, DeadlineExceeded
from taskdb.queue.context import JobContext
from taskdb.queue.durable import DurableStreamWriter

log = logging.getLogger("taskdb.server")


@dataclass(eq=False, slots=True)
class Run:
    """A claimed job while this server holds it."""

    job: Any  # the claimed row: id, attempts, input, deadline, max_retries, ...
    claim: Claim
    ctx: JobContext
    task: asyncio.Task[None] | None = None
    cancelling: bool = False  # the server cancelled the handler (abort, lost lease, release)
    releasing: bool = False  # give the job back untouched (stopping)
    lost: bool = False  # the lease was lost: nothing may be written
    recording: bool = False  # the handler returned, its slot is free; the outcome is written
    cancel_timer: asyncio.TimerHandle | None = None
    stream: DurableStreamWriter | None = None  # the job was submitted with durable_stream
    given_back: bool = False  # its output or outcome could not be stored: released
    started: float = field(default_factory=time.monotonic)


class GiveBack(Exception):
    """The handler returned but its output could not be stored (the database is
    away): the job goes back to PENDING, its attempt not counted against it."""


def cancel_handler(run: Run) -> None:
    """Cancel a run's handler (never its outcome write, which is fenced anyway)."""
    if run.task is not None and not run.recording and not run.cancelling:
        run.cancelling = True
        run.task.cancel()


def failure(
    run: Run,
    exc: BaseException,
    *,
    clock: Clock,
    retry: RetryPolicy,
    max_retries: int | None = None,
) -> Outcome:
    """What an attempt that raised ``exc`` leads to (an aborted job fails as aborted)."""
    if run.ctx.aborting:
        return Fail("aborted", AbortedJobError.__name__)
    job = run.job
    outcome = decide_failure(
        exc,
        attempts=job.attempts,
        max_retries=job.max_retries if max_retries is None else min(job.max_retries, max_retries),
        deadline=job.deadline,
        now=clock(),
        policy=retry,
    )
    fields = job_fields(job)
    if isinstance(outcome, Retry):
        when = f"; retried at {outcome.run_after:%Y-%m-%d %H:%M:%S%z}"
        level = logging.WARNING
    else:
        when, level = "", logging.ERROR
    log.log(
        level,
        "job %s (queue %r, task %s) attempt %s failed: %s: %s%s",
        job.id,
        fields["queue"],
        fields["task"] or "-",
        job.attempts,
        outcome.error_code,
        outcome.error,
        when,
        exc_info=exc,
        extra=fields,
    )
    return outcome


def job_fields(job: Any) -> dict[str, Any]:
    """A claimed job's identity as log record fields (``--log-format json`` shows them)."""
    return {
        "job_id": job.id,
        "queue": getattr(job, "queue", None),
        "task": getattr(job, "task", None),
        "attempt": job.attempts,
    }


async def execute(
    run: Run,
    output_of: Callable[[Run], Awaitable[Complete]],
    *,
    clock: Clock,
    retry: RetryPolicy,
    max_retries: int | None = None,
) -> Outcome | None:
    """Run ``output_of(run)`` (the handler, and storing its binary output) in the
    current task, which must be ``run.task``; ``None`` when nothing must be
    written (released, given back, lease lost)."""
    job = run.job
    deadline = None
    if job.deadline is not None:
        left = (job.deadline - clock()).total_seconds()
        deadline = asyncio.get_running_loop().time() + max(0.0, left)
    timer = None if deadline is None else asyncio.timeout_at(deadline)
    try:
        if timer is None:
            done = await output_of(run)
        else:
            async with timer:
                done = await output_of(run)
    except TimeoutError as exc:
        if timer is None or not timer.expired():  # the handler raised it itself
            return failure(run, exc, clock=clock, retry=retry, max_retries=max_retries)
        return Fail("deadline exceeded while running", DeadlineExceeded.__name__)
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if not run.cancelling or task is None:
            raise  # not ours: the server itself is being cancelled
        task.uncancel()
        if run.releasing or run.lost:
            return None
        return Fail("aborted", AbortedJobError.__name__)
    except GiveBack as exc:
        log.warning("job %s: %s; given back, its attempt not counted", job.id, exc)
        run.releasing = run.given_back = True
        return None
    except Exception as exc:
        return failure(run, exc, clock=clock, retry=retry, max_retries=max_retries)
    # Not JSON? The outcome write rejects it and fails only this job.
    return done
