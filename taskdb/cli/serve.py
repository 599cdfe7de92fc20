"""``taskdb worker`` and ``taskdb scheduler``: the long-running processes.

A worker serves queues (an App's tasks, a handler, or a class made with the
database) until SIGINT/SIGTERM, then stops gracefully; a scheduler only
enqueues an App's periodic jobs.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from gc import collect, freeze
from typing import Any, Literal

import click

from taskdb import settings
from taskdb.app import App
from taskdb.cli import logs
from taskdb.cli.common import (
    db_option,
    given_db_url,
    import_module,
    load_app,
    load_target,
    stop_on_signals,
)
from taskdb.core.durations import parse_duration, parse_rate
from taskdb.errors import ConfigurationError
from taskdb.queue import (
    CompositeLimiter,
    ConcurrencyLimiter,
    JobQueueServer,
    Limiter,
    RateLimiter,
    RetryPolicy,
    ServerSettings,
)
from taskdb.store import Database, connect


@click.command()
@click.argument("target", metavar="MODULE:ATTR")
@db_option
@click.option(
    "--queue",
    "-q",
    "queues",
    multiple=True,
    help="A queue to serve (repeatable). Default for an App: every queue of its tasks.",
)
@click.option(
    "--concurrency",
    "-c",
    type=click.IntRange(min=1),
    default=settings.DEFAULT_WORKER_SLOTS,
    show_default=True,
    help="Jobs run at once per queue (async handlers on one event loop; plain `def` "
    "tasks in as many threads).",
)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    help="Threads running an App's plain `def` tasks (default: one per slot).",
)
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
@click.option(
    "--max-retries", type=click.IntRange(min=0), help="The most retries any job gets here."
)
@click.option("--retry-base", help="Backoff after the first failure, e.g. 1s (doubles each time).")
@click.option("--retry-cap", help="The longest backoff, e.g. 5m.")
@click.option("--rate", help="At most N job starts per period across every worker: N/period.")
@click.option("--concurrency-limit", type=click.IntRange(min=1), help="At most N jobs at once.")
@click.option(
    "--scope",
    type=click.Choice(["worker", "queue"]),
    default="worker",
    show_default=True,
    help="--concurrency-limit counts this worker's jobs, or the queue's on every worker.",
)
@click.option(
    "--health-file",
    type=click.Path(dir_okay=False),
    help="Touch this file at start and every heartbeat (lease/3): a liveness probe.",
)
@click.option(
    "--no-scheduler",
    is_flag=True,
    help="Do not enqueue an App's periodic jobs here (another process runs the scheduler).",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(1, 65535),
    help="Serve this worker's Prometheus metrics on this port (/metrics, every address).",
)
@click.pass_context
def worker(
    ctx: click.Context,
    target: str,
    db_url: str,
    queues: tuple[str, ...],
    concurrency: int,
    threads: int | None,
    imports: tuple[str, ...],
    lease: float,
    poll: float,
    stop_timeout: float,
    max_retries: int | None,
    retry_base: str | None,
    retry_cap: str | None,
    rate: str | None,
    concurrency_limit: int | None,
    scope: Literal["worker", "queue"],
    health_file: str | None,
    no_scheduler: bool,
    metrics_port: int | None,
) -> None:
    """Serve queues until SIGINT/SIGTERM, then stop gracefully.

    TARGET is `module:app`, an App: its tasks run on every queue they name (or the
    `-q` ones), and its periodic schedules are enqueued here too (one job per tick
    however many workers run; `--no-scheduler` to leave that to others); or
    `module:function`, an async `function(input, ctx)` serving each `-q` queue; or
    `module:Class`, made with the database: `taskdb:GraphJobHandler` runs submitted
    task graphs (add `--import` for the module registering their task types).
    """
    for module_name in imports:
        import_module(module_name)
    loaded = load_target(target)
    if not isinstance(loaded, App) and not queues:
        raise click.UsageError("a handler serves the queues named with --queue/-q")
    policy = RetryPolicy()
    if retry_base is not None:
        policy = replace(policy, base_seconds=parse_duration(retry_base))
    if retry_cap is not None:
        policy = replace(policy, max_seconds=parse_duration(retry_cap))
    rate_limit = None if rate is None else parse_rate(rate)

    def limiter() -> Limiter | None:
        """A fresh limiter for one queue's server (a limiter keeps state)."""
        limits: list[Limiter] = []
        if concurrency_limit is not None:
            limits.append(ConcurrencyLimiter(concurrency_limit, scope=scope))
        if rate_limit is not None:
            limits.append(RateLimiter(*rate_limit))
        if len(limits) > 1:
            return CompositeLimiter(*limits)
        return limits[0] if limits else None

    options = ServerSettings(
        workers=concurrency,
        lease_seconds=lease,
        poll_interval=poll,
        stop_timeout=stop_timeout,
        health_file=health_file,
        max_retries=max_retries,
        retry=policy,
    )

    url = given_db_url(ctx, db_url)  # (None: an App keeps its own; a handler, TASKDB_URL)
    asyncio.run(
        _serve(
            loaded, target, url, queues, options, limiter, threads, not no_scheduler, metrics_port
        )
    )


def settle_heap() -> None:
    """Freeze what start-up made (modules, the app, SQLAlchemy's metadata) out of the
    garbage collector's reach: a worker's full collections otherwise scan all of it
    again and again, about 20 µs a job in a busy worker (each took ~100 ms)."""
    collect()
    freeze()


def _handler(target: Any, spec: str, db: Database) -> Any:
    """The handler ``module:attr`` names: the callable itself, or a class made with the
    database (:class:`ConfigurationError` when it cannot be, or is not callable)."""
    if not inspect.isclass(target):
        return target
    try:
        handler = target(db)
    except TypeError as exc:
        raise ConfigurationError(
            f"{spec} is a class that cannot be made with the database: {exc}"
        ) from None
    if not callable(handler):
        raise ConfigurationError(f"{spec}(db) is not a handler: it cannot be called")
    return handler


async def _serve(
    target: Any,
    spec: str,
    db_url: str | None,
    queues: tuple[str, ...],
    options: ServerSettings,
    limiter: Callable[[], Limiter | None],
    threads: int | None,
    with_scheduler: bool,
    metrics_port: int | None = None,
) -> None:
    """Run the worker: servers for ``queues`` (and an App's scheduler) until
    SIGINT/SIGTERM, and its metrics on ``metrics_port``."""
    pool = None
    scheduler = None
    if isinstance(target, App):
        if db_url is not None:
            target.bind(connect(db_url))
        db = target.db
        chosen = list(dict.fromkeys(queues)) or target.queues
        if not chosen:
            raise ConfigurationError(f"{target!r} has no task, so no queue to serve")
        pool = ThreadPoolExecutor(
            threads or options.workers * len(chosen), thread_name_prefix="taskdb-task"
        )
        servers = [
            server
            for q in chosen
            for server in target.servers(
                [q], threads=pool, settings=options.replace(limiter=limiter())
            )
        ]
        if with_scheduler and target.schedules:
            scheduler = target.scheduler()
    else:
        db = connect(db_url)
        handler = _handler(target, spec, db)
        servers = [
            JobQueueServer(db, q, handler, options.replace(limiter=limiter()))
            for q in dict.fromkeys(queues)
        ]
    stop = asyncio.Event()
    try:
        await db.check()  # unreachable, or behind head: one line, before any claim
        settle_heap()

        def hurry() -> None:
            logs.status("stopping now: giving the running jobs back")
            for server in servers:
                server.hurry()

        with stop_on_signals(stop, again=hurry):
            if metrics_port is not None:
                from taskdb.web import serve_worker_metrics  # the web stack loads lazily

                serve_worker_metrics(metrics_port, lambda: [s.stats() for s in servers])
            for server in servers:
                await server.start()
            ticking = None if scheduler is None else asyncio.ensure_future(scheduler.run())
            served = ", ".join(repr(s.queue) for s in servers)
            schedules = "" if scheduler is None else f" and {len(scheduler.schedules)} schedule(s)"
            logs.status(
                f"worker {servers[0].worker_id} serving {served}{schedules} on {db.safe_url} "
                f"with {options.workers} slot(s) each; Ctrl-C to stop"
            )
            await stop.wait()
            logs.status("stopping: letting running jobs finish (Ctrl-C again to give them back)")
            if scheduler is not None and ticking is not None:
                scheduler.stop()
                await ticking
            await asyncio.gather(*(server.stop() for server in servers))
        totals = [s.stats() for s in servers]
        logs.status(
            f"stopped: {sum(t.completed for t in totals)} completed, "
            f"{sum(t.failed for t in totals)} failed, {sum(t.retried for t in totals)} "
            f"retried, {sum(t.released for t in totals)} released"
        )
    finally:
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
        await db.aclose()


@click.command("scheduler")
@click.argument("target", metavar="MODULE:APP")
@db_option
@click.pass_context
def scheduler_command(ctx: click.Context, target: str, db_url: str) -> None:
    """Enqueue an App's periodic jobs until SIGINT/SIGTERM, without running any job:
    one job per tick however many schedulers and workers run (each `taskdb worker`
    of the App runs one too, unless `--no-scheduler`)."""
    app = load_app(ctx, target, db_url, needed_for="only an App has schedules")
    if not app.schedules:
        raise ConfigurationError(f"{target!r} has no schedule: define them with @app.periodic")
    asyncio.run(_schedule(app))


async def _schedule(app: App) -> None:
    db = app.db
    stop = asyncio.Event()
    try:
        await db.check()
        scheduler = app.scheduler()
        with stop_on_signals(stop):
            ticking = asyncio.ensure_future(scheduler.run())
            logs.status(
                f"scheduler of {len(scheduler.schedules)} schedule(s) on {db.safe_url}; "
                "Ctrl-C to stop"
            )
            await asyncio.wait(
                [ticking, asyncio.ensure_future(stop.wait())], return_when=asyncio.FIRST_COMPLETED
            )
            scheduler.stop()
            await ticking
        logs.status(f"stopped: {scheduler.enqueued} job(s) enqueued")
    finally:
        await db.aclose()
