"""The dashboard's statements on ``taskdb_jobs`` read indexes, proven with EXPLAIN on
PostgreSQL (``enable_seqscan=off`` on a small table: the plan says which index the
planner can use; ``benchmarks/dashboard.py`` times them on 1,000,000 rows)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
from sqlalchemy import event, make_url
from sqlalchemy.engine import Engine

import taskdb


@contextmanager
def statements_on_jobs() -> Iterator[list[tuple[str, Any]]]:
    """The SELECTs on ``taskdb_jobs`` this process runs while inside, with parameters."""
    found: list[tuple[str, Any]] = []

    def seen(conn: Any, cursor: Any, statement: str, parameters: Any, *args: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "FROM taskdb_jobs" in statement:
            found.append((statement, parameters))

    event.listen(Engine, "before_cursor_execute", seen)
    try:
        yield found
    finally:
        event.remove(Engine, "before_cursor_execute", seen)


def explain(url: str, statement: str, parameters: Any) -> str:
    plain = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(plain, autocommit=True) as conn:
        conn.execute("SET enable_seqscan = off")
        rows = conn.execute("EXPLAIN " + statement, parameters).fetchall()  # type: ignore[arg-type]
    return "\n".join(str(r[0]) for r in rows)


CASES: list[tuple[str, Callable[[taskdb.Admin], Awaitable[Any]], list[str]]] = [
    (
        "overview counts and lag",
        lambda a: a.stats(),
        ["Index Only Scan using ix_taskdb_jobs_queue_status", "ix_taskdb_jobs_claim"],
    ),
    ("throughput chart", lambda a: a.throughput(), ["ix_taskdb_jobs_completed"]),
    (
        "job list, newest first",
        lambda a: a.list_jobs(limit=50),
        ["Index Scan Backward using pk_taskdb_jobs"],
    ),
    ("job list, next page", lambda a: a.list_jobs(limit=50, before=40), ["pk_taskdb_jobs"]),
    (
        "job list of a queue and status",
        lambda a: a.list_jobs(queue="q1", status=["FAILED"], limit=50, before=40),
        ["ix_taskdb_jobs_queue_status"],
    ),
]


@pytest.mark.parametrize(("what", "call", "indexes"), CASES, ids=[c[0] for c in CASES])
async def test_the_dashboards_reads_use_indexes(
    fresh_pg_url: str,
    what: str,
    call: Callable[[taskdb.Admin], Awaitable[Any]],
    indexes: list[str],
) -> None:
    db = taskdb.connect(fresh_pg_url)
    try:
        for n in range(60):
            await taskdb.JobQueueClient(db, f"q{n % 3}").submit({"n": n})
        ended = "UPDATE taskdb_jobs SET status = 'COMPLETED', completed_at = now() WHERE id % 2 = 0"
        plain = make_url(fresh_pg_url).set(drivername="postgresql")
        with psycopg.connect(plain.render_as_string(hide_password=False), autocommit=True) as c:
            c.execute(ended)  # type: ignore[arg-type]
            c.execute("ANALYZE taskdb_jobs")
        with statements_on_jobs() as found:
            await call(taskdb.Admin(db))
    finally:
        await db.aclose()
    assert found, f"{what}: no statement on taskdb_jobs"
    plans = "\n\n".join(explain(fresh_pg_url, s, p) for s, p in found)
    assert "Seq Scan on taskdb_jobs" not in plans, plans
    for index in indexes:
        assert index in plans, plans
