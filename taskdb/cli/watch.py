"""``taskdb watch``: follow jobs live from another process.

Transitions and progress come from the change feed (:meth:`taskdb.Admin.watch`,
filtered by queue or job, woken by NOTIFY on PostgreSQL when the queue is
known); ``--follow-stream`` prints one job's durable text stream
(``JobQueueClient.follow``).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Coroutine
from typing import Any, Literal

import click

from taskdb.admin import Admin, JobOutcome
from taskdb.cli.common import db_option, json_line, json_option, stop_on_signals, with_db
from taskdb.cli.jobs import WAIT_EXIT
from taskdb.core import ChangeKind, Job, JobChange, JobStatus
from taskdb.core.durations import parse_duration
from taskdb.errors import JobNotFound
from taskdb.json_views import change_json, stream_item_json
from taskdb.queue import JobQueueClient
from taskdb.store import Database
from taskdb.streams import Finish, Phase, StreamError, TextDelta

Outcome = Literal["done", "signal", "timeout"]

_COLORS = {"completed": "green", "failed": "red", "aborted": "red", "retried": "yellow"}


class _Printer:
    """Prints changes: JSON lines, or one human line each (a job's failure with its error)."""

    def __init__(self, admin: Admin, as_json: bool) -> None:
        self.admin = admin
        self.as_json = as_json

    async def __call__(self, change: JobChange) -> None:
        if self.as_json:
            click.echo(json_line(change_json(change)))
            return
        detail = ""
        if change.kind is ChangeKind.CLAIMED:
            detail = f"attempt {change.attempts}"
        elif change.kind is ChangeKind.PROGRESS and change.progress is not None:
            detail = f"{change.progress:.0f}%"
        elif change.status is JobStatus.FAILED:  # the row keeps a final error
            try:
                row = await self.admin.get_job(change.job_id)
            except JobNotFound:  # purged meanwhile
                row = None
            if row is not None and row.error:
                detail = f"{row.error_code}: {row.error}"[:100]
        kind = click.style(f"{change.kind.value:<9}", fg=_COLORS.get(change.kind.value))
        click.echo(
            f"{change.at:%H:%M:%S}.{change.at.microsecond // 1000:03d}  {change.queue}  "
            f"job {change.job_id:<5} {kind}  {change.status.value:<10} {detail}".rstrip()
        )


async def _watch_changes(
    db: Database,
    queue: str | None,
    job: Job | None,
    after: str | None,
    poll: float,
    max_events: int | None,
    as_json: bool,
) -> None:
    """Print changes until ``job`` ended or ``max_events`` were printed (or forever)."""
    admin = Admin(db)
    printer = _Printer(admin, as_json)
    finished = asyncio.Event()
    printed = 0

    async def on_change(change: JobChange) -> None:
        nonlocal printed
        if finished.is_set():
            return  # the rest of a page read before the end
        await printer(change)
        printed += 1
        ended = job is not None and change.status.terminal
        if ended or (max_events is not None and printed >= max_events):
            finished.set()

    if job is not None and after is None:
        after = "0"  # the job's transitions so far, then live ones
    stop = await admin.watch(
        on_change,
        after=after,
        poll_interval=poll,
        queue=queue,
        job_id=None if job is None else job.id,
    )

    scope = "every queue" if queue is None else f"queue {queue!r}"
    click.echo(f"watching {scope if job is None else f'job {job.id}'} of {db.safe_url}", err=True)
    try:
        await finished.wait()
    finally:
        await stop()


async def _follow_stream(db: Database, job: Job, as_json: bool) -> None:
    """Print job ``job``'s durable text stream as it is produced (phases on stderr)."""
    stdout = sys.stdout
    tail = "\n"
    async for offset, event in JobQueueClient(db, job.queue).follow(job.id):
        if as_json:
            click.echo(json_line(stream_item_json(offset, event)))
        elif isinstance(event, TextDelta) and event.text:
            stdout.write(event.text)
            stdout.flush()
            tail = event.text[-1]
        elif isinstance(event, Phase):
            progress = "" if event.progress is None else f" ({event.progress:.0f}%)"
            click.secho(f"{event.message}{progress}", dim=True, err=True)
        if isinstance(event, Finish | StreamError) and not as_json and tail != "\n":
            stdout.write("\n")
        if isinstance(event, StreamError):
            error = event.error
            raise click.ClickException(f"job {job.id} failed: {type(error).__name__}: {error}")
    click.echo(f"job {job.id} completed", err=True)


async def _until_stopped(work: Coroutine[Any, Any, None], timeout: float | None) -> Outcome:
    """Run ``work`` until it returns (its errors propagate), SIGINT/SIGTERM, or ``timeout``."""
    stop = asyncio.Event()
    with stop_on_signals(stop):
        task = asyncio.ensure_future(work)
        stopper = asyncio.ensure_future(stop.wait())
        try:
            done, _ = await asyncio.wait(
                {task, stopper}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for pending in (task, stopper):
                pending.cancel()
            await asyncio.gather(task, stopper, return_exceptions=True)
    if task in done:
        task.result()
        return "done"
    return "signal" if stopper in done else "timeout"


@click.command()
@db_option
@json_option
@click.option("--queue", "-q", help="Only this queue (default: every queue).")
@click.option("--job", "job_id", type=int, help="Only this job; ends when the job ends.")
@click.option(
    "--follow-stream",
    is_flag=True,
    help="With --job: print the job's text stream as it is produced (the job must have "
    "been submitted with a durable stream); ends when the job ends.",
)
@click.option(
    "--after", help="Start after this change-feed cursor (a change's cursor; 0: the whole feed)."
)
@click.option("--max-events", type=click.IntRange(min=1), help="Stop after this many changes.")
@click.option("--timeout", help="Stop after this long, e.g. 30s (exit 1 if --job has not ended).")
@click.option("--poll", default=0.2, show_default=True, help="Seconds between feed reads.")
def watch(
    db_url: str,
    as_json: bool,
    queue: str | None,
    job_id: int | None,
    follow_stream: bool,
    after: str | None,
    max_events: int | None,
    timeout: str | None,
    poll: float,
) -> None:
    """Print job transitions and progress live, as other processes make them.

    Runs until SIGINT/SIGTERM (exit 0), after --max-events changes or after
    --timeout. With --job: prints the job's transitions so far, then live ones,
    until it ends; exits like `taskdb wait` (0 completed, 1 failed, 2 aborted, 3
    timeout).
    """
    if follow_stream and job_id is None:
        raise click.ClickException("--follow-stream needs --job")
    seconds = None if timeout is None else parse_duration(timeout)

    @with_db
    async def body(db: Database) -> Outcome:
        job = None if job_id is None else await Admin(db).get_job(job_id)
        if job is not None and queue is not None and job.queue != queue:
            raise click.ClickException(f"job {job.id} is on queue {job.queue!r}, not {queue!r}")
        if follow_stream and job is not None:
            return await _until_stopped(_follow_stream(db, job, as_json), seconds)
        watched = queue if job is None else job.queue
        work = _watch_changes(db, watched, job, after, poll, max_events, as_json)
        outcome = await _until_stopped(work, seconds)
        if job is not None and outcome != "signal":
            ended = JobOutcome.of(await Admin(db).get_job(job.id))
            if ended.state != "completed":
                click.echo(ended.describe(), err=True)
            sys.exit(WAIT_EXIT[ended.state])
        return outcome

    body(db_url)
