"""Commands of the ``taskdb`` CLI. Each parses, calls the library, formats.

Library errors become one line on stderr and exit status 1, in one place
(:class:`_Group`); nothing prints a traceback.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import signal
import sys
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime, timedelta
from functools import wraps
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.table import Table

from taskdb import settings
from taskdb.cli.durations import parse_duration
from taskdb.errors import ConfigurationError, TaskdbError
from taskdb.queue.client import JobQueueClient
from taskdb.queue.models import TERMINAL_STATUSES, Job, JobStatus
from taskdb.queue.server import JobQueueServer
from taskdb.store.database import Database, connect
from taskdb.store.jobs import JobStore
from taskdb.store.migrate import head_revision

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

out = Console()
err = Console(stderr=True)


class _Group(click.Group):
    """Turns every TaskdbError into one clean line and a non-zero exit."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except TaskdbError as exc:
            raise click.ClickException(str(exc)) from None
        except KeyboardInterrupt:
            raise click.Abort() from None


def db_option(func: F) -> F:
    return click.option(
        "--db",
        "db_url",
        envvar=settings.URL_ENV,
        default=settings.DEFAULT_URL,
        show_default=True,
        help="Database URL (env TASKDB_URL).",
    )(func)


def json_option(func: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")(
        func
    )


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def with_db(func: Callable[..., Coroutine[Any, Any, T]]) -> Callable[..., T]:
    """Open the database for an async command body and close it afterwards."""

    @wraps(func)
    def wrapper(db_url: str, **kwargs: Any) -> T:
        async def body() -> T:
            db = connect(db_url)
            try:
                return await func(db, **kwargs)
            finally:
                await db.aclose()

        return run(body())

    return wrapper


def _print_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, default=str))


def _job_dict(job: Job) -> dict[str, Any]:
    return job.model_dump(mode="json")


def _age(when: datetime | None) -> str:
    if when is None:
        return "-"
    seconds = (datetime.now(UTC) - when).total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit} ago"
    return f"{max(seconds, 0):.0f}s ago"


@click.group(cls=_Group)
@click.version_option(package_name="taskdb", prog_name="taskdb")
def cli() -> None:
    """taskdb: a durable SQL job queue (PostgreSQL or SQLite)."""


# -- schema ------------------------------------------------------------------------


@cli.command()
@db_option
@click.option("--check", is_flag=True, help="Only check; exit 1 if the schema is behind head.")
def migrate(db_url: str, check: bool) -> None:
    """Upgrade the database schema to the latest revision."""
    db = connect(db_url)
    try:
        current, head = db.schema_revision(), head_revision()
        if check:
            if current != head:
                raise click.ClickException(
                    f"schema of {db.safe_url} is at {current or 'nothing'}, head is {head}: "
                    "run `taskdb migrate`"
                )
            click.echo(f"{db.safe_url} is up to date ({head})")
            return
        db.migrate()
        click.echo(f"{db.safe_url} migrated: {current or 'empty'} -> {head}")
    finally:
        db.close()


# -- worker ------------------------------------------------------------------------


def load_handler(spec: str) -> Callable[..., Any]:
    """Import ``module:attr`` (the current directory is importable)."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigurationError(f"handler must look like module:function, got {spec!r}")
    if "" not in sys.path:
        sys.path.insert(0, "")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(f"cannot import {module_name!r}: {exc}") from exc
    handler = getattr(module, attr, None)
    if not callable(handler):
        raise ConfigurationError(f"{spec!r} is not a callable in {module_name!r}")
    return handler  # type: ignore[no-any-return]


@cli.command()
@click.argument("handler")
@db_option
@click.option("--queue", "-q", required=True, help="Queue to serve.")
@click.option("--concurrency", "-c", default=1, show_default=True, help="Concurrent jobs.")
@click.option(
    "--lease",
    default=settings.DEFAULT_LEASE_SECONDS,
    show_default=True,
    help="Lease seconds (renewed by heartbeat).",
)
@click.option(
    "--poll",
    default=settings.DEFAULT_POLL_INTERVAL,
    show_default=True,
    help="Seconds between polls when idle.",
)
@click.option(
    "--stop-timeout",
    default=30.0,
    show_default=True,
    help="On SIGINT/SIGTERM, seconds to let running jobs finish before releasing them.",
)
def worker(
    handler: str,
    db_url: str,
    queue: str,
    concurrency: int,
    lease: float,
    poll: float,
    stop_timeout: float,
) -> None:
    """Run HANDLER (module:function) for jobs of a queue until SIGINT/SIGTERM."""
    func = load_handler(handler)

    async def body() -> None:
        db = connect(db_url)
        server = JobQueueServer(
            db,
            queue,
            func,
            workers=concurrency,
            lease_seconds=lease,
            poll_interval=poll,
            stop_timeout=stop_timeout,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await server.start()
            err.print(
                f"worker {server.worker_id} serving queue {queue!r} on {db.safe_url} "
                f"with {concurrency} slot(s); Ctrl-C to stop"
            )
            await stop.wait()
            err.print("stopping: letting running jobs finish...")
            await server.stop()
            s = server.stats()
            err.print(
                f"stopped: {s.completed} completed, {s.failed} failed, {s.retried} retried, "
                f"{s.released} released"
            )
        finally:
            await db.aclose()

    run(body())


# -- jobs --------------------------------------------------------------------------


def _parse_time(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        return datetime.now(UTC) + timedelta(seconds=parse_duration(value))
    except ConfigurationError:
        pass
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ConfigurationError(
            f"bad time {value!r}: use an ISO datetime with an offset or a delay like 10m"
        ) from None
    if parsed.tzinfo is None:
        raise ConfigurationError(f"time {value!r} has no timezone offset")
    return parsed


@cli.command()
@click.argument("queue")
@click.argument("payload")
@db_option
@click.option("--run-after", help="ISO datetime with offset, or a delay such as 10m.")
@click.option("--deadline", help="ISO datetime with offset, or a delay such as 1h.")
@click.option("--priority", default=0, show_default=True, help="Larger runs first.")
@click.option("--fingerprint", help="Dedupe key: an active job with it is returned instead.")
@click.option("--max-retries", type=int, default=None, help="Retries after the first run.")
def submit(
    queue: str,
    payload: str,
    db_url: str,
    run_after: str | None,
    deadline: str | None,
    priority: int,
    fingerprint: str | None,
    max_retries: int | None,
) -> None:
    """Enqueue a job with a JSON PAYLOAD on QUEUE; prints the job id."""
    try:
        value = json.loads(payload)
    except json.JSONDecodeError as exc:
        raise click.ClickException(f"payload is not valid JSON: {exc}") from None

    @with_db
    async def body(db: Database) -> int:
        handle = await JobQueueClient(db, queue).submit(
            value,
            run_after=_parse_time(run_after),
            deadline=_parse_time(deadline),
            priority=priority,
            fingerprint=fingerprint,
            max_retries=max_retries,
        )
        return handle.id

    click.echo(body(db_url))


_STATUS = click.Choice([s.value for s in JobStatus], case_sensitive=False)


@cli.command()
@db_option
@json_option
@click.option("--queue", "-q", help="Only this queue.")
@click.option("--status", "-s", type=_STATUS, multiple=True, help="Only these statuses.")
@click.option("--limit", default=50, show_default=True)
def jobs(
    db_url: str, as_json: bool, queue: str | None, status: tuple[str, ...], limit: int
) -> None:
    """List jobs, newest first."""

    @with_db
    async def body(db: Database) -> list[Job]:
        return await JobStore(db).list_jobs(
            queue=queue, status=[s.upper() for s in status], limit=limit
        )

    rows = body(db_url)
    if as_json:
        _print_json([_job_dict(j) for j in rows])
        return
    table = Table("id", "queue", "status", "attempts", "progress", "updated", "error")
    for j in rows:
        table.add_row(
            str(j.id),
            j.queue,
            j.status.value,
            f"{j.attempts}/{j.max_retries + 1}",
            f"{j.progress:.0f}%",
            _age(j.updated_at),
            (j.error or "")[:60],
        )
    out.print(table)


@cli.group()
def job() -> None:
    """Inspect or act on one job."""


@job.command("show")
@click.argument("job_id", type=int)
@db_option
@json_option
def job_show(job_id: int, db_url: str, as_json: bool) -> None:
    """Show a job's row: status, progress, error, attempts and output."""

    @with_db
    async def body(db: Database) -> Job:
        return await JobStore(db).get(job_id)

    row = body(db_url)
    data = _job_dict(row)
    if as_json:
        _print_json(data)
        return
    table = Table("field", "value", show_header=False)
    for key, value in data.items():
        shown = value if isinstance(value, str) else json.dumps(value, default=str)
        table.add_row(key, shown)
    out.print(table)


@job.command("retry")
@click.argument("job_id", type=int)
@db_option
def job_retry(job_id: int, db_url: str) -> None:
    """Run a FAILED job once more."""

    @with_db
    async def body(db: Database) -> bool:
        return await JobStore(db).retry_now(job_id, datetime.now(UTC))

    if not body(db_url):
        raise click.ClickException(f"job {job_id} is not FAILED; nothing to retry")
    click.echo(f"job {job_id} is PENDING again")


@job.command("abort")
@click.argument("job_id", type=int)
@db_option
def job_abort(job_id: int, db_url: str) -> None:
    """Abort a job (a running one is cancelled by its worker)."""

    @with_db
    async def body(db: Database) -> int:
        return await JobStore(db).abort(datetime.now(UTC), job_id=job_id)

    changed = body(db_url)
    click.echo(f"job {job_id} aborted" if changed else f"job {job_id} had already ended")


@job.command("purge")
@db_option
@click.option("--older-than", required=True, help="Age such as 7d or 12h.")
@click.option("--status", "-s", type=_STATUS, multiple=True, help="Default: every ended status.")
@click.option("--queue", "-q")
def job_purge(db_url: str, older_than: str, status: tuple[str, ...], queue: str | None) -> None:
    """Delete ended jobs older than an age."""
    cutoff = datetime.now(UTC) - timedelta(seconds=parse_duration(older_than))
    statuses = [s.upper() for s in status] or list(TERMINAL_STATUSES)
    if bad := [s for s in statuses if s not in TERMINAL_STATUSES]:
        raise click.ClickException(f"only ended jobs can be purged, not {', '.join(bad)}")

    @with_db
    async def body(db: Database) -> int:
        return await JobStore(db).purge(cutoff, datetime.now(UTC), queue=queue, statuses=statuses)

    click.echo(f"purged {body(db_url)} job(s)")


@cli.command()
@db_option
@json_option
def stats(db_url: str, as_json: bool) -> None:
    """Job counts per queue and status."""

    @with_db
    async def body(db: Database) -> list[tuple[str, str, int]]:
        return await JobStore(db).counts()

    counts = body(db_url)
    if as_json:
        _print_json([{"queue": q, "status": s, "count": n} for q, s, n in counts])
        return
    table = Table("queue", "status", "count")
    for q, s, n in sorted(counts):
        table.add_row(q, s, str(n))
    out.print(table)


@cli.command()
@db_option
@click.option("--jobs", "count", default=8, show_default=True, help="Jobs in the batch.")
@click.option("--workers", default=2, show_default=True, help="Worker processes.")
def demo(db_url: str, count: int, workers: int) -> None:
    """A guided tour: worker processes, live progress, a retry and an abort."""
    from taskdb.cli.demo import run_demo

    run(run_demo(db_url, count, workers))


def main() -> None:
    cli(prog_name="taskdb")
