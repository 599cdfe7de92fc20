"""``taskdb submit``, ``taskdb defer``, ``taskdb jobs`` and ``taskdb job
show|retry|abort|purge``."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.table import Table

from taskdb.admin import Admin, JobOutcome
from taskdb.cli.common import db_option, json_option, load_app, out, print_json, with_db
from taskdb.core import Job, JobStatus
from taskdb.core.durations import parse_duration, parse_when
from taskdb.core.format import binary_values, human_age, render
from taskdb.errors import ConfigurationError
from taskdb.json_views import job_json, jobs_json
from taskdb.queue import JobQueueClient, SubmitOptions
from taskdb.store import Database

F = TypeVar("F", bound=Callable[..., Any])

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


def job_options(func: F) -> F:
    """The options of a new job that ``submit`` and ``defer`` share."""
    options = [
        click.option("--run-after", help="ISO datetime with offset, or a delay such as 10m."),
        click.option("--deadline", help="ISO datetime with offset, or a delay such as 1h."),
        click.option("--priority", type=int, help="Larger runs first (default 0, or the task's)."),
        click.option(
            "--fingerprint", help="Dedupe key: an active job with it is returned instead."
        ),
        click.option(
            "--max-retries",
            type=click.IntRange(min=0),
            help="Retries after the first run (default the queue's, or the task's).",
        ),
        click.option(
            "--durable-stream",
            is_flag=True,
            help="Store the job's stream events (taskdb watch --job).",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def submit_options(
    run_after: str | None,
    deadline: str | None,
    priority: int | None,
    max_retries: int | None,
    durable_stream: bool,
) -> SubmitOptions:
    """The options given on the command line (the others keep their defaults)."""
    given = SubmitOptions()
    if run_after is not None:
        given["run_after"] = parse_when(run_after)
    if deadline is not None:
        given["deadline"] = parse_when(deadline)
    if priority is not None:
        given["priority"] = priority
    if max_retries is not None:
        given["max_retries"] = max_retries
    if durable_stream:
        given["durable_stream"] = True
    return given


@click.command()
@click.argument("queue")
@click.argument("payload")
@db_option
@job_options
@click.option(
    "--task",
    help="The typed task the job runs (an App task's name), unchecked here: "
    "`taskdb defer` checks the arguments and applies the task's options.",
)
def submit(
    queue: str,
    payload: str,
    db_url: str,
    fingerprint: str | None,
    task: str | None,
    **options: Any,
) -> None:
    """Enqueue a job with a JSON PAYLOAD on QUEUE; prints the job id. PAYLOAD is JSON,
    `-` to read it from standard input, or `@file.json`."""
    value = read_payload(payload)
    given = submit_options(**options)
    given["task"] = task

    @with_db
    async def body(db: Database) -> int:
        handle = await JobQueueClient(db, queue).submit(value, fingerprint=fingerprint, **given)
        return handle.id

    click.echo(body(db_url))


@click.command()
@click.argument("target", metavar="MODULE:APP")
@click.argument("task_name", metavar="TASK")
@click.argument("arguments", default="{}", metavar="[ARGUMENTS]")
@db_option
@click.option("--queue", "-q", help="Another queue than the task's.")
@job_options
@click.pass_context
def defer(
    ctx: click.Context,
    /,
    target: str,
    task_name: str,
    arguments: str,
    db_url: str,
    queue: str | None,
    fingerprint: str | None,
    **options: Any,
) -> None:
    """Defer TASK of the App at MODULE:APP, as `task.defer(**ARGUMENTS)` would; prints
    the job id. ARGUMENTS is a JSON object of the task's keyword arguments (default
    `{}`; `-` for standard input, or `@file.json`), checked here against its
    signature. TASK is its name, or its function's name if no other task has it. The
    task's queue, priority and max_retries apply unless given."""
    app = load_app(ctx, target, db_url, needed_for="defer runs an App's tasks")
    task = app.tasks.get(task_name)
    if task is None:  # the function's own name is enough when only one task has it
        named = [t for name, t in app.tasks.items() if name.rpartition(".")[2] == task_name]
        if len(named) != 1:
            known = ", ".join(sorted(t.name for t in named) or sorted(app.tasks)) or "none"
            problem = "several tasks named" if named else "no task"
            raise ConfigurationError(f"{target} has {problem} {task_name!r} (its tasks: {known})")
        (task,) = named
    kwargs = read_payload(arguments)
    if not isinstance(kwargs, dict):
        raise click.ClickException("ARGUMENTS must be a JSON object of keyword arguments")
    call = task.configure(queue=queue, fingerprint=fingerprint, **submit_options(**options))

    async def body() -> int:
        try:
            return (await call.defer_async(**kwargs)).id
        finally:
            await app.db.aclose()

    click.echo(asyncio.run(body()))


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
