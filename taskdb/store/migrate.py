"""Run the packaged Alembic migrations programmatically.

Alembic is imported on first use (``migrate``, or the first transaction's schema
check): ``import taskdb`` does not pay for it.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Connection

from taskdb.errors import ConfigurationError

if TYPE_CHECKING:
    from alembic.config import Config


def migrations_dir() -> Path:
    """Where the migrations live: inside the wheel, else the source checkout."""
    package = Path(__file__).resolve().parents[1]
    for candidate in (package / "migrations", package.parent / "migrations"):
        if (candidate / "env.py").is_file():
            return candidate
    raise FileNotFoundError("taskdb migrations folder not found")  # a broken install


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic config for taskdb's migrations; ``connection`` is used by env.py if given."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


@cache
def revisions() -> tuple[str, ...]:
    """Every packaged revision, oldest first (the history is linear)."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(alembic_config())
    return tuple(reversed([s.revision for s in script.walk_revisions()]))


def head_revision() -> str:
    """The revision the code expects the database to be at."""
    return revisions()[-1]


def _rank(revision: str) -> int:
    """``revision``'s place in the history: ``base`` 0, ``head`` the last."""
    known = revisions()
    if revision == "base":
        return 0
    if revision == "head":
        return len(known)
    try:
        return known.index(revision) + 1
    except ValueError:
        raise ConfigurationError(
            f"unknown schema revision {revision!r} (known: base, {known[0]}..{known[-1]}, head)"
        ) from None


def _at(current: str | None) -> int:
    if current is not None and current not in revisions():
        raise ConfigurationError(
            f"the database is at schema revision {current!r}, which this taskdb does not "
            f"know (its newest is {head_revision()}): a newer taskdb migrated it"
        )
    return _rank(current or "base")


def upgrade(connection: Connection, revision: str, current: str | None) -> None:
    """Upgrade from ``current`` (the database's revision) to ``revision``; a target
    behind ``current`` is a :class:`~taskdb.ConfigurationError` (not a silent no-op)."""
    from alembic import command

    if _rank(revision) < _at(current):
        raise ConfigurationError(
            f"the database is at schema revision {current}, past {revision}: "
            "migrate only upgrades (Database.downgrade goes back)"
        )
    command.upgrade(alembic_config(connection), revision)


def downgrade(connection: Connection, revision: str, current: str | None) -> None:
    """Downgrade from ``current`` to ``revision``; a target ahead of ``current`` is a
    :class:`~taskdb.ConfigurationError`."""
    from alembic import command

    if _rank(revision) > _at(current):
        raise ConfigurationError(
            f"the database is at schema revision {current or 'base'}, behind {revision}: "
            "downgrade only goes back (Database.migrate upgrades)"
        )
    command.downgrade(alembic_config(connection), revision)
