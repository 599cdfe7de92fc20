"""Alembic environment for taskdb (both dialects; version table taskdb_alembic_version)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, create_engine, pool

from taskdb.store.schema import VERSION_TABLE, include_object, metadata

config = context.config


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        version_table=VERSION_TABLE,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        include_object=include_object(connection.dialect.name),
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = config.get_main_option("sqlalchemy.url")
    assert url, "set sqlalchemy.url in alembic.ini or pass a connection"
    engine = create_engine(
        url.replace("postgresql://", "postgresql+psycopg://"), poolclass=pool.NullPool
    )
    with engine.begin() as conn:
        _run(conn)


if context.is_offline_mode():
    raise SystemExit("taskdb migrations run online only")
run_migrations_online()
