"""Statements compiled for the psycopg connection (no database needed to compile)."""

from __future__ import annotations

import pytest
from sqlalchemy import bindparam, select
from sqlalchemy.dialects.postgresql.psycopg import PGDialectAsync_psycopg

from taskdb.store.driver import DriverStatement
from taskdb.store.schema import UtcDateTime, jobs


def test_expanding_in_is_refused_at_compile_time() -> None:
    stmt = select(jobs.c.id).where(jobs.c.status.in_(["PENDING", "FAILED"]))
    with pytest.raises(TypeError, match="expanding IN"):
        DriverStatement.compile(stmt, PGDialectAsync_psycopg())


def test_literals_are_carried_and_caller_values_processed() -> None:
    stmt = select(jobs.c.id, jobs.c.run_after).where(
        jobs.c.queue == "q", jobs.c.run_after <= bindparam("now", type_=UtcDateTime())
    )
    compiled = DriverStatement.compile(stmt, PGDialectAsync_psycopg())
    assert "q" in compiled.fixed.values()
    assert [name for name, _ in compiled.binds] == ["now"]  # the UtcDateTime check
    # sessions run in UTC: psycopg gives run_after in datetime.UTC, nothing to convert
    assert compiled.results == ()
    assert compiled.row._fields == ("id", "run_after")
