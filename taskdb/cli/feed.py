"""``taskdb feed trim``: the change feed's retention."""

from __future__ import annotations

from datetime import timedelta

import click

from taskdb.admin import Admin
from taskdb.cli.common import db_option, with_db
from taskdb.core.durations import parse_duration
from taskdb.store import Database


@click.group()
def feed() -> None:
    """The change feed (what `taskdb watch`, followers and the dashboard read)."""


@feed.command("trim")
@db_option
@click.option("--older-than", required=True, help="Age such as 30d or 12h.")
def feed_trim(db_url: str, older_than: str) -> None:
    """Delete changes recorded more than an age ago (the jobs stay; their history in
    `taskdb watch --job` and the dashboard loses those changes)."""
    age = timedelta(seconds=parse_duration(older_than))

    @with_db
    async def body(db: Database) -> int:
        return await Admin(db).trim_changes(age)

    click.echo(f"trimmed {body(db_url)} change(s)")
