"""The ``taskdb`` command group, ``migrate``, ``worker`` and ``demo``; the other
commands live in their own modules. Each command parses, calls the library, formats.

Bad input becomes one line on stderr and a non-zero exit, in one place
(:class:`_Group`): library errors (``TaskdbError``) and usage errors alike;
nothing prints a traceback. URLs are only ever printed as ``db.safe_url``.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import os
import sys
from collections.abc import Callable
from typing import Any

import click

from taskdb import settings
from taskdb.cli.blobs import blob, gc
from taskdb.cli.common import db_option, err, stop_on_signals
from taskdb.cli.jobs import job, jobs, submit
from taskdb.cli.stats import stats
from taskdb.cli.watch import watch
from taskdb.errors import ConfigurationError, TaskdbError
from taskdb.queue import JobQueueServer
from taskdb.store import connect, head_revision


class _UsageError(click.ClickException):
    exit_code = 2


class _Group(click.Group):
    """Turns every TaskdbError and usage error into one clean line."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except TaskdbError as exc:
            raise click.ClickException(str(exc)) from None
        except click.UsageError as exc:
            where = exc.ctx.command_path if exc.ctx else "taskdb"
            hint = f" (see `{where} --help`)"
            raise _UsageError(exc.format_message().rstrip(".") + hint) from None
        except KeyboardInterrupt:
            raise click.Abort() from None
        except BrokenPipeError:  # `taskdb blob cat ... | head`: the reader left
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(1)


@click.group(cls=_Group)
@click.version_option(package_name="taskdb", prog_name="taskdb")
def cli() -> None:
    """taskdb: durable jobs, task graphs and binary streams in PostgreSQL or SQLite."""


for _command in (submit, jobs, job, watch, stats, blob, gc):
    cli.add_command(_command)


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


def _import(module_name: str) -> Any:
    if "" not in sys.path:
        sys.path.insert(0, "")  # the current directory, as `python -m` has it
    try:
        return importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(f"cannot import {module_name!r}: {exc}") from exc


def load_handler(spec: str) -> Callable[..., Any]:
    """The callable ``module:attr`` names (the current directory is importable)."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigurationError(f"handler must look like module:function, got {spec!r}")
    handler: Callable[..., Any] | None = getattr(_import(module_name), attr, None)
    if not callable(handler):
        raise ConfigurationError(f"{spec!r} is not a callable in {module_name!r}")
    return handler


@cli.command()
@click.argument("handler")
@db_option
@click.option("--queue", "-q", required=True, help="Queue to serve.")
@click.option("--concurrency", "-c", default=1, show_default=True, help="Concurrent jobs.")
@click.option(
    "--import",
    "imports",
    multiple=True,
    metavar="MODULE",
    help="Import MODULE first (e.g. the module registering a graph's task types).",
)
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
    imports: tuple[str, ...],
    lease: float,
    poll: float,
    stop_timeout: float,
) -> None:
    """Run HANDLER for the jobs of a queue until SIGINT/SIGTERM, then stop gracefully.

    HANDLER is `module:function`, an async `function(input, ctx)`; or
    `module:Class`, made with the database: `taskdb:GraphJobHandler` runs submitted
    task graphs (add `--import` for the module registering their task types).
    """
    for module_name in imports:
        _import(module_name)
    factory = load_handler(handler)

    async def body() -> None:
        db = connect(db_url)
        func = factory(db) if inspect.isclass(factory) else factory
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
        try:
            with stop_on_signals(stop):
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

    asyncio.run(body())


@cli.command()
@db_option
@click.option("--jobs", "count", default=8, show_default=True, help="Jobs in the batch.")
@click.option("--workers", default=2, show_default=True, help="Worker processes.")
@click.option("--mib", default=48, show_default=True, help="Size of the graph's binary output.")
def demo(db_url: str, count: int, workers: int, mib: int) -> None:
    """A guided tour: worker processes with live progress, a retry and an abort, a task
    graph streaming a large binary into the database, a watcher process, `blob cat`."""
    from taskdb.cli.demo import run_demo

    asyncio.run(run_demo(db_url, count, workers, mib))


def main() -> None:
    cli(prog_name="taskdb")
