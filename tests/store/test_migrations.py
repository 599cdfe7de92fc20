"""Migration drift: the migrated schema is the SQLAlchemy metadata, on both dialects."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect, text

import taskdb
from taskdb.store.migrate import alembic_config, revisions
from taskdb.store.schema import VERSION_TABLE, include_object, metadata


def _sync_url(url: str) -> str:
    return url.replace("postgresql://", "postgresql+psycopg://")


def _diff(url: str) -> list[object]:
    engine = create_engine(_sync_url(url))
    try:
        with engine.connect() as conn:
            opts = {
                "compare_type": True,
                "version_table": VERSION_TABLE,
                # PostgreSQL-only columns (the change feed's xid) are not on SQLite
                "include_object": include_object(conn.dialect.name),
            }
            context = MigrationContext.configure(conn, opts=opts)
            return list(compare_metadata(context, metadata))
    finally:
        engine.dispose()


def _tables(url: str) -> set[str]:
    engine = create_engine(_sync_url(url))
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_single_head() -> None:
    heads = ScriptDirectory.from_config(alembic_config()).get_heads()
    assert len(heads) == 1


def test_migrated_schema_matches_metadata(empty_db_url: str) -> None:
    db = taskdb.connect(empty_db_url)
    assert db.schema_revision() is None
    db.migrate()
    assert _diff(empty_db_url) == []
    assert {t for t in _tables(empty_db_url)} == {*metadata.tables, VERSION_TABLE}
    db.close()


def test_upgrade_downgrade_upgrade(empty_db_url: str) -> None:
    db = taskdb.connect(empty_db_url)
    db.migrate()
    head = db.schema_revision()
    db.downgrade("base")
    assert db.schema_revision() is None
    assert _tables(empty_db_url) <= {VERSION_TABLE}
    db.migrate()
    assert db.schema_revision() == head
    assert _diff(empty_db_url) == []
    db.close()


def test_every_table_is_prefixed() -> None:
    assert all(name.startswith("taskdb_") for name in metadata.tables)


def _index_definitions(url: str) -> dict[str, str]:
    """Every taskdb index as the database spells it (order and WHERE included,
    which the metadata comparison does not look at)."""
    engine = create_engine(_sync_url(url))
    try:
        with engine.connect() as conn:
            if conn.dialect.name == "sqlite":
                rows = conn.exec_driver_sql(
                    "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL"
                )
            else:
                rows = conn.exec_driver_sql(
                    "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'"
                )
            return {name: " ".join(sql.split()) for name, sql in rows}
    finally:
        engine.dispose()


def test_indexes_keep_their_order_and_predicates_through_every_step(empty_db_url: str) -> None:
    db = taskdb.connect(empty_db_url)
    db.migrate()
    fresh = _index_definitions(empty_db_url)
    assert "priority DESC" in fresh["ix_taskdb_jobs_claim"]
    assert "WHERE" in fresh["ix_taskdb_jobs_claim"]
    revisions = [r.revision for r in ScriptDirectory.from_config(alembic_config()).walk_revisions()]
    for revision in revisions[1:]:  # step down to each earlier revision and back up
        db.downgrade(revision)
        db.migrate()
        assert _index_definitions(empty_db_url) == fresh, f"after down to {revision} and up"
    db.close()


def test_a_revision_the_database_is_past_or_does_not_know_is_one_clear_error(
    empty_db_url: str,
) -> None:
    db = taskdb.connect(empty_db_url)
    db.migrate()
    head, previous = revisions()[-1], revisions()[-2]
    with pytest.raises(
        taskdb.ConfigurationError, match=f"at schema revision {head}, past {previous}"
    ):
        db.migrate(previous)  # was a silent no-op
    with pytest.raises(taskdb.ConfigurationError, match="unknown schema revision 'nonsense'"):
        db.migrate("nonsense")
    with pytest.raises(taskdb.ConfigurationError, match="unknown schema revision '0099'"):
        db.downgrade("0099")
    assert db.schema_revision() == head and _diff(empty_db_url) == []
    db.downgrade(previous)
    with pytest.raises(taskdb.ConfigurationError, match=f"at schema revision {previous}, behind"):
        db.downgrade("head")
    assert db.schema_revision() == previous
    db.migrate()
    assert db.schema_revision() == head
    db.close()


async def test_a_database_a_newer_taskdb_migrated_is_refused_with_the_remedy(
    empty_db_url: str,
) -> None:
    db = taskdb.connect(empty_db_url)
    db.migrate()
    engine = create_engine(_sync_url(empty_db_url))
    with engine.begin() as conn:
        conn.execute(text(f"UPDATE {VERSION_TABLE} SET version_num = '9999'"))
    engine.dispose()
    with pytest.raises(taskdb.ConfigurationError, match="'9999', which this taskdb does not know"):
        db.migrate()
    with pytest.raises(taskdb.SchemaOutOfDate, match="upgrade taskdb"):
        await db.check()
    assert db.schema_revision() == "9999"
    await db.aclose()
