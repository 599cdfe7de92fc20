"""``taskdb schedules`` (the periodic schedules and their last job) and
``taskdb schedule pause|resume|trigger|delete NAME``."""

from __future__ import annotations

from datetime import UTC, datetime

import click
from rich.box import SIMPLE
from rich.table import Table

from taskdb.admin import Admin
from taskdb.cli.common import db_option, json_option, out, print_json, with_db
from taskdb.core import Cadence, ScheduleInfo
from taskdb.core.format import human_age, human_seconds
from taskdb.json_views import schedule_json
from taskdb.store import Database


@click.command()
@db_option
@json_option
def schedules(db_url: str, as_json: bool) -> None:
    """Periodic schedules: cadence, next tick, last tick with its job and status,
    paused, and orphaned (no scheduler registered it in the last 5 minutes: removed
    from code, or no worker or scheduler runs)."""

    @with_db
    async def body(db: Database) -> list[ScheduleInfo]:
        return await Admin(db).schedules()

    found = body(db_url)
    if as_json:
        print_json([schedule_json(info) for info in found])
        return
    now = datetime.now(UTC)
    table = Table("schedule", "when", "next", "last tick", "state", box=SIMPLE, pad_edge=False)
    for info in found:
        when = Cadence(cron=info.cron, every=info.every, timezone=info.timezone).describe()
        next_tick = (
            "-"
            if info.next_tick is None
            else "in " + human_seconds((info.next_tick - now).total_seconds())
        )
        last = human_age(info.last_tick, now)
        if info.last_job_id is not None:
            last += f", job {info.last_job_id} {info.last_job_status or '(purged)'}"
        state = ", ".join(
            word for word, on in (("paused", info.paused), ("orphaned", info.orphaned)) if on
        )
        table.add_row(
            f"{info.name}\n[task {info.task} on {info.queue}]",
            when,
            next_tick,
            last,
            state or "active",
        )
    out.print(table if found else "no schedules: define them with @app.periodic")


@click.group()
def schedule() -> None:
    """Pause, resume, trigger or delete a periodic schedule."""


def _act(name: str, db_url: str, action: str) -> int | None:
    @with_db
    async def body(db: Database) -> int | None:
        return await Admin(db).act_on_schedule(name, action)

    return body(db_url)


@schedule.command("pause")
@click.argument("name")
@db_option
def schedule_pause(name: str, db_url: str) -> None:
    """Stop enqueueing schedule NAME's ticks (on every scheduler)."""
    _act(name, db_url, "pause")
    click.echo(f"schedule {name!r} paused: no tick runs until `taskdb schedule resume`")


@schedule.command("resume")
@click.argument("name")
@db_option
def schedule_resume(name: str, db_url: str) -> None:
    """Enqueue schedule NAME's ticks again, from now on (missed ones do not run)."""
    _act(name, db_url, "resume")
    click.echo(f"schedule {name!r} resumed")


@schedule.command("trigger")
@click.argument("name")
@db_option
def schedule_trigger(name: str, db_url: str) -> None:
    """Enqueue a job of schedule NAME now, outside its ticks; prints the job id."""
    click.echo(_act(name, db_url, "trigger"))


@schedule.command("delete")
@click.argument("name")
@db_option
def schedule_delete(name: str, db_url: str) -> None:
    """Forget schedule NAME (an orphaned one); a scheduler that still has it in code
    registers it again."""
    _act(name, db_url, "delete")
    click.echo(f"schedule {name!r} deleted")
