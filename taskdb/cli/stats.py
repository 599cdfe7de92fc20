"""``taskdb stats`` (per-queue counts, lag and throughput, blob totals) and
``taskdb queue pause|resume``."""

from __future__ import annotations

import click
from rich.box import SIMPLE
from rich.table import Table

from taskdb.admin import Admin
from taskdb.cli.common import db_option, json_option, out, print_json, with_db
from taskdb.core import JobStatus
from taskdb.core.format import human_age, human_seconds, human_size
from taskdb.json_views import stats_json, worker_json
from taskdb.store import Database, DatabaseStats, WorkerInfo

_ALWAYS = ("PENDING", "PROCESSING", "COMPLETED", "FAILED")


@click.command()
@db_option
@json_option
def stats(db_url: str, as_json: bool) -> None:
    """Jobs per queue and status, the lag (how long the oldest job ready to run has
    waited), jobs completed in the last minute, and the blob store's size."""

    @with_db
    async def body(db: Database) -> DatabaseStats:
        return await Admin(db).stats()

    found = body(db_url)
    if as_json:
        print_json(stats_json(found))
        return
    present = {status for q in found.queues for status in q.counts}
    statuses = [s.value for s in JobStatus if s.value in present or s.value in _ALWAYS]
    table = Table(
        "queue", *(s.lower() for s in statuses), "lag", "done/min", box=SIMPLE, pad_edge=False
    )
    for q in found.queues:
        lag = q.oldest_pending_seconds
        table.add_row(
            f"{q.queue} (paused)" if q.paused else q.queue,
            *(str(q.counts.get(s, 0)) for s in statuses),
            "-" if lag is None else human_seconds(lag),
            str(q.completed_last_minute),
        )
    out.print(table)
    b = found.blobs
    writing = f" ({b.writing} being written)" if b.writing else ""
    out.print(f"blobs: {b.count} holding {human_size(b.bytes)}{writing}")


@click.group()
def queue() -> None:
    """Pause or resume a queue."""


@queue.command("pause")
@click.argument("name")
@db_option
def queue_pause(name: str, db_url: str) -> None:
    """Stop every worker claiming from queue NAME (running jobs finish; jobs can still
    be submitted)."""

    @with_db
    async def body(db: Database) -> None:
        await Admin(db).pause_queue(name)

    body(db_url)
    click.echo(f"queue {name!r} paused: no worker claims from it until `taskdb queue resume`")


@queue.command("resume")
@click.argument("name")
@db_option
def queue_resume(name: str, db_url: str) -> None:
    """Let workers claim from queue NAME again."""

    @with_db
    async def body(db: Database) -> None:
        await Admin(db).resume_queue(name)

    body(db_url)
    click.echo(f"queue {name!r} resumed")


@click.command()
@db_option
@json_option
def workers(db_url: str, as_json: bool) -> None:
    """Running workers (one line per queue each serves) from their heartbeats; a
    worker killed without stopping shows as stale."""

    @with_db
    async def body(db: Database) -> list[WorkerInfo]:
        return await Admin(db).workers()

    found = body(db_url)
    if as_json:
        print_json([worker_json(w) for w in found])
        return
    table = Table("worker", "queue", "running", "slots", "heartbeat", box=SIMPLE, pad_edge=False)
    for w in found:
        beat = human_age(w.heartbeat_at) + (" (stale)" if w.stale else "")
        table.add_row(w.worker_id, w.queue, str(w.running), str(w.slots), beat)
    out.print(table)
