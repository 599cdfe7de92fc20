"""``taskdb migrate``: upgrade the schema (only Alembic migrations change it)."""

from __future__ import annotations

import click

from taskdb.cli.common import db_option
from taskdb.store import connect, head_revision


@click.command()
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
