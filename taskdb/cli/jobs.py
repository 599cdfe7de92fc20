"""``taskdb submit``, ``taskdb jobs`` and ``taskdb job show|retry|abort|purge``."""

from __future__ import annotations

import json
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from taskdb.admin import Admin, JobOutcome
from taskdb.cli.common import db_option, json_option, out, print_json, with_db
from taskdb.core import Job, JobStatus
from taskdb.core.durations import parse_duration, parse_when
from taskdb.core.format import binary_values, human_age, render
from taskdb.json_views import job_json, jobs_json
from taskdb.queue import JobQueueClient
from taskdb.store import Database

STATUS = click.Choice([s.value for s in JobStatus], case_sensitive=False)


def parse_json(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise click.ClickException(f"{what} is not valid JSON: {exc}") from None
    except RecursionError:
        raise click.ClickException(f"{what} is nested too deeply to read") from None


def read_payload(argument: str) -> Any:
    """A payload argument: JSON, ``-`` for standard input, or ``@file.json``."""
    if argument == "-":
        return parse_json(sys.stdin.read(), "the payload on standard input")
    if argument.startswith("@"):
        path = Path(argument[1:])
        try:
            text = path.read_text()
        except OSError as exc:
            raise click.ClickException(
                f"cannot read the payload file {path}: {exc.strerror}"
            ) from None
        return parse_json(text, f"the payload file {path}")
    return parse_json(argument, "payload")


@click.command()
@click.argument("queue")
@click.argument("payload")
@db_option
@click.option("--run-after", help="ISO datetime with offset, or a delay such as 10m.")
@click.option("--deadline", help="ISO datetime with offset, or a delay such as 1h.")
@click.option("--priority", default=0, show_default=True, help="Larger runs first.")
@click.option("--fingerprint", help="Dedupe key: an active job with it is returned instead.")
@click.option("--max-retries", type=int, default=None, help="Retries after the first run.")
@click.option(
    "--durable-stream", is_flag=True, help="Store the job's stream events (taskdb watch --job)."
)
@click.option(
    "--task",
    help="The typed task the job runs (an App task's name). The payload is its keyword "
    "arguments, checked on the worker. The task's own max_retries and priority are not "
    "known here: give --max-retries and --priority.",
)
def submit(
    queue: str,
    payload: str,
    db_url: str,
    run_after: str | None,
    deadline: str | None,
    priority: int,
    fingerprint: str | None,
    max_retries: int | None,
    durable_stream: bool,
    task: str | None,
) -> None:
    """Enqueue a job with a JSON PAYLOAD on QUEUE; prints the job id. PAYLOAD is JSON,
    `-` to read it from standard input, or `@file.json`."""
    value = read_payload(payload)
    when, until = parse_when(run_after), parse_when(deadline)

    @with_db
    async def body(db: Database) -> int:
        handle = await JobQueueClient(db, queue).submit(
            value,
            run_after=when,
            deadline=until,
            priority=priority,
            fingerprint=fingerprint,
            max_retries=max_retries,
            durable_stream=durable_stream,
            task=task,
        )
        return handle.id

    click.echo(body(db_url))


@click.command()
@db_option
@json_option
@click.option("--queue", "-q", multiple=True, help="Only this queue (give it once).")
@click.option("--status", "-s", type=STATUS, multiple=True, help="Only these statuses.")
@click.option("--task", "-t", help="Only jobs of this typed task.")
@click.option("--text", help="Holding this text in their task, error or fingerprint.")
@click.option("--limit", default=50, show_default=True, help="At most this many jobs.")
def jobs(
    db_url: str,
    as_json: bool,
    queue: tuple[str, ...],
    status: tuple[str, ...],
    task: str | None,
    text: str | None,
    limit: int,
) -> None:
    """List jobs, newest first."""
    if len(queue) > 1:  # (click would silently keep the last one)
        raise click.UsageError("give --queue at most once")

    @with_db
    async def body(db: Database) -> list[Job]:
        return await Admin(db).list_jobs(
            queue=queue[0] if queue else None, status=status, task=task, text=text, limit=limit
        )

    rows = body(db_url)
    if as_json:
        print_json(jobs_json(rows))
        return
    table = Table("id", "queue", "task", "status", "attempts", "progress", "updated", "error")
    for j in rows:
        table.add_row(
            str(j.id),
            j.queue,
            j.task or "-",
            j.status.value,
            f"{j.attempts}/{j.max_retries + 1}",
            f"{j.progress:.0f}%",
            human_age(j.updated_at),
            _first_line(j.error)[:60],
        )
    out.print(table)


def _first_line(text: str | None) -> str:
    return (text or "").strip().split("\n", 1)[0]


@click.group()
def job() -> None:
    """Inspect or act on one job."""


def _show_rows(row: Job) -> list[tuple[str, str]]:
    progress = f"{row.progress:g}%" + (f"  {row.progress_message}" if row.progress_message else "")
    error = f"{row.error_code}: {row.error}" if row.error_code else row.error
    rows = [
        ("id", str(row.id)),
        ("queue", row.queue),
        ("task", row.task or "-"),
        ("status", row.status.value),
        ("attempts", f"{row.attempts} of at most {row.max_retries + 1}"),
        ("progress", progress),
        ("error", error or "-"),
        ("priority", str(row.priority)),
        ("run after", row.run_after.isoformat()),
        ("deadline", row.deadline.isoformat() if row.deadline else "-"),
        ("created", f"{row.created_at.isoformat()} ({human_age(row.created_at)})"),
        ("updated", f"{row.updated_at.isoformat()} ({human_age(row.updated_at)})"),
        ("completed", row.completed_at.isoformat() if row.completed_at else "-"),
        ("worker", row.worker_id or "-"),
        ("fingerprint", row.fingerprint or "-"),
        ("run id", row.job_run_id or "-"),
        ("durable stream", "yes" if row.durable_stream else "no"),
        ("input", render(row.input)),
        ("output", render(row.output)),
    ]
    refs = [f"{path or '.'}: {v['$ref']}" for path, v in binary_values(row.output) if "$ref" in v]
    if refs:
        rows.append(("blobs", "\n".join(refs)))
    carrier = row.trace_context
    if isinstance(carrier, dict) and isinstance(carrier.get("traceparent"), str):
        # W3C traceparent: version-traceid-spanid-flags; the trace id finds it in a tracing UI
        parts = carrier["traceparent"].split("-")
        rows.append(("trace", parts[1] if len(parts) == 4 else carrier["traceparent"]))
    return rows


@job.command("show")
@click.argument("job_id", type=int)
@db_option
@json_option
def job_show(job_id: int, db_url: str, as_json: bool) -> None:
    """Show a job: status, progress, error, attempts, and its output with binary
    values summarised (`<ref 5.0 MiB image/png>`, `<bytes 12 B>`)."""

    @with_db
    async def body(db: Database) -> Job:
        return await Admin(db).get_job(job_id)

    row = body(db_url)
    if as_json:
        print_json(job_json(row))
        return
    table = Table("field", "value", show_header=False)
    for field, value in _show_rows(row):
        table.add_row(field, value)
    out.print(table)
    if row.error_traceback:  # below the table, verbatim: a cell would wrap and cut its lines
        click.echo(f"traceback of the last failure:\n{row.error_traceback}")


@job.command("retry")
@click.argument("job_id", type=int)
@db_option
def job_retry(job_id: int, db_url: str) -> None:
    """Run a FAILED job once more."""

    @with_db
    async def body(db: Database) -> bool:
        return await Admin(db).retry_job(job_id)

    if not body(db_url):
        raise click.ClickException(f"job {job_id} is not FAILED; nothing to retry")
    click.echo(f"job {job_id} is PENDING again")


@job.command("abort")
@click.argument("job_id", type=int)
@db_option
def job_abort(job_id: int, db_url: str) -> None:
    """Abort a job (a running one is cancelled by its worker)."""

    @with_db
    async def body(db: Database) -> bool:
        return await Admin(db).abort_job(job_id)

    changed = body(db_url)
    click.echo(f"job {job_id} aborted" if changed else f"job {job_id} had already ended")


@job.command("purge")
@db_option
@click.option("--older-than", required=True, help="Age such as 7d or 12h.")
@click.option("--status", "-s", type=STATUS, multiple=True, help="Default: every ended status.")
@click.option("--queue", "-q", help="Only this queue.")
def job_purge(db_url: str, older_than: str, status: tuple[str, ...], queue: str | None) -> None:
    """Delete ended jobs older than an age (their blobs go when nothing else uses them)."""
    age = timedelta(seconds=parse_duration(older_than))

    @with_db
    async def body(db: Database) -> int:
        if status:
            return await Admin(db).purge_jobs(age, queue=queue, status=status)
        return await Admin(db).purge_jobs(age, queue=queue)

    click.echo(f"purged {body(db_url)} job(s)")


WAIT_EXIT = {"completed": 0, "failed": 1, "aborted": 2, "timeout": 3}


@click.command()
@click.argument("job_id", type=int)
@db_option
@click.option("--timeout", help="Give up after this long, e.g. 30s (exit 3).")
def wait(job_id: int, db_url: str, timeout: str | None) -> None:
    """Wait for a job to end; print its output as JSON. Exit 0 when it completed, 1
    when it failed, 2 when it was aborted, 3 on timeout (its error on stderr)."""
    seconds = None if timeout is None else parse_duration(timeout)

    @with_db
    async def body(db: Database) -> JobOutcome:
        return await Admin(db).wait(job_id, seconds)

    outcome = body(db_url)
    if outcome.state == "completed":
        print_json(outcome.job.output)
    else:
        click.echo(outcome.describe(), err=True)
    sys.exit(WAIT_EXIT[outcome.state])
