"""The change feed: exact cursors on both dialects; on PostgreSQL, commits out of seq order.

The PostgreSQL races use real concurrent transactions (raw psycopg connections
left open), never mocks.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import psycopg
import pytest

import taskdb
from taskdb import ChangeKind, ConfigurationError, JobChange
from taskdb.core.jobs import JobOptions, NewJob
from taskdb.store.feed import ChangeFeed
from taskdb.store.jobs import JobStore

NOW = datetime(2026, 1, 1, tzinfo=UTC)
OPTIONS = JobOptions(run_after=NOW, max_retries=0)


@pytest.fixture
def store(db: taskdb.Database) -> JobStore:
    return JobStore(db)


async def _submit(store: JobStore, n: int, queue: str = "q") -> list[int]:
    return await store.submit(queue, OPTIONS, [NewJob.of({"n": i}) for i in range(n)], NOW)


async def _read_all(store: JobStore, after: str | int, limit: int = 1000) -> list[JobChange]:
    """Every change after ``after``, page by page."""
    seen: list[JobChange] = []
    while True:
        page = await ChangeFeed(store.db).page(after, limit=limit)
        seen += page.changes
        after = page.cursor
        if not page.full:
            return seen


async def test_pages_and_cursors_resume_exactly(store: JobStore) -> None:
    ids = await _submit(store, 7)
    everything = await _read_all(store, 0, limit=3)
    assert [c.job_id for c in everything] == ids
    assert len({c.seq for c in everything}) == 7
    for i, change in enumerate(everything):
        assert await _read_all(store, change.cursor, limit=2) == everything[i + 1 :]
    # A cursor taken now sees only what commits later.
    head = await ChangeFeed(store.db).head()
    assert await ChangeFeed(store.db).changes(head) == []
    more = await _submit(store, 2)
    assert [c.job_id for c in await ChangeFeed(store.db).changes(head)] == more
    assert [c.job_id for c in await ChangeFeed(store.db).changes(everything[-1].cursor)] == more


async def test_filters_and_int_cursors(store: JobStore) -> None:
    a = await _submit(store, 2, queue="a")
    b = await _submit(store, 2, queue="b")
    assert [c.job_id for c in await ChangeFeed(store.db).changes(0, queue="b")] == b
    assert [c.job_id for c in await ChangeFeed(store.db).changes(0, job_id=a[1])] == [a[1]]
    first = (await ChangeFeed(store.db).changes(0, limit=1))[0]
    assert [c.job_id for c in await ChangeFeed(store.db).changes(first.seq)] == [*a[1:], *b]
    # A page that reads nothing new still moves past what it could see.
    page = await ChangeFeed(store.db).page(first.cursor, queue="nothing-here")
    assert page.changes == [] and not page.full
    assert await ChangeFeed(store.db).changes(page.cursor) == []


@pytest.mark.parametrize("bad", ["", "abc", "1:1:/x/0", "-1", "1/2/3", -5])
async def test_malformed_cursors_are_rejected(store: JobStore, bad: str | int) -> None:
    with pytest.raises(ConfigurationError, match="cursor"):
        await ChangeFeed(store.db).changes(bad)


async def test_a_postgresql_cursor_is_refused_by_sqlite(fresh_sqlite_url: str) -> None:
    db = taskdb.connect(fresh_sqlite_url)
    with pytest.raises(ConfigurationError, match="sqlite"):
        await ChangeFeed(db).changes("5:9:6/9:9:/12")
    await db.aclose()


# -- PostgreSQL: sequence values commit out of order ------------------------------------


@pytest.fixture
def pg(fresh_pg_url: str) -> Iterator[_Pg]:
    pg = _Pg(fresh_pg_url.replace("+psycopg", ""))
    yield pg
    pg.close()


class _Pg:
    """Raw transactions on the test database, left open as long as a test needs."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._conns: list[psycopg.Connection[tuple[object, ...]]] = []

    def begin(self) -> psycopg.Connection[tuple[object, ...]]:
        conn = psycopg.connect(self.url)  # not autocommit: the first statement begins
        self._conns.append(conn)
        return conn

    @staticmethod
    def change(conn: psycopg.Connection[tuple[object, ...]], job_id: int) -> int:
        """Write one change record (the way every transition does); returns its seq."""
        row = conn.execute(
            "INSERT INTO taskdb_job_changes (job_id, queue, kind, status, attempts, at) "
            "VALUES (%s, 'q', 'progress', 'PROCESSING', 1, now()) RETURNING seq",
            (job_id,),
        ).fetchone()
        assert row is not None
        return int(str(row[0]))

    def close(self) -> None:
        for conn in self._conns:
            conn.close()


async def test_a_change_committed_late_is_delivered_once(fresh_pg_url: str, pg: _Pg) -> None:
    db = taskdb.connect(fresh_pg_url)
    store = JobStore(db)
    cursor = await ChangeFeed(store.db).head()
    a, b = pg.begin(), pg.begin()
    seq_a = pg.change(a, 1)
    seq_b = pg.change(b, 2)
    assert seq_a < seq_b  # A took the lower seq ...
    b.commit()  # ... and B commits first
    delivered: list[JobChange] = []
    page = await ChangeFeed(store.db).page(cursor)
    delivered += page.changes
    assert [c.seq for c in delivered] == [seq_b]
    a.commit()
    page = await ChangeFeed(store.db).page(page.cursor)
    delivered += page.changes
    assert [c.seq for c in delivered] == [seq_b, seq_a]  # in commit order, each once
    assert await ChangeFeed(store.db).changes(page.cursor) == []
    # A reader that resumes from any delivered change's cursor gets exactly the rest.
    assert await ChangeFeed(store.db).changes(delivered[0].cursor) == delivered[1:]
    await db.aclose()


async def test_changes_of_one_job_stay_in_order(fresh_pg_url: str, pg: _Pg) -> None:
    """T2 gets its transaction id first, T1 then changes job 7 and commits, T2 changes
    job 7 after it; an unrelated T3 started between them stays open. A reader that
    only delivers transactions below the oldest open one (xmin) would hand out T2's
    change of job 7 before T1's; batches by commit keep them in order."""
    db = taskdb.connect(fresh_pg_url)
    store = JobStore(db)
    cursor = await ChangeFeed(store.db).head()
    t2, t3, t1 = pg.begin(), pg.begin(), pg.begin()
    other = pg.change(t2, 99)
    unrelated = pg.change(t3, 55)
    first = pg.change(t1, 7)
    t1.commit()
    second = pg.change(t2, 7)
    t2.commit()
    page = await ChangeFeed(store.db).page(cursor)
    assert [(c.job_id, c.seq) for c in page.changes] == [(99, other), (7, first), (7, second)]
    t3.commit()
    assert [c.seq for c in await ChangeFeed(store.db).changes(page.cursor)] == [unrelated]
    await db.aclose()


async def test_an_open_transaction_holds_nothing_back(fresh_pg_url: str, pg: _Pg) -> None:
    db = taskdb.connect(fresh_pg_url)
    store = JobStore(db)
    cursor = await ChangeFeed(store.db).head()
    idle = pg.begin()
    pg.change(idle, 1)  # open (and holding back xmin) for the whole test
    ids = await _submit(store, 3)
    page = await ChangeFeed(store.db).page(cursor, limit=2)  # also across a page boundary
    rest = await ChangeFeed(store.db).page(page.cursor, limit=2)
    assert [c.job_id for c in page.changes + rest.changes] == ids
    assert [c.kind for c in rest.changes] == [ChangeKind.SUBMITTED]
    idle.rollback()  # a rolled-back change never appears
    assert await ChangeFeed(store.db).changes(rest.cursor) == []
    await db.aclose()


async def test_int_cursor_on_postgresql_reads_after_that_seq(fresh_pg_url: str) -> None:
    db = taskdb.connect(fresh_pg_url)
    store = JobStore(db)
    ids = await _submit(store, 3)
    changes = await ChangeFeed(store.db).changes(0)
    assert [c.job_id for c in await ChangeFeed(store.db).changes(changes[0].seq)] == ids[1:]
    assert [c.job_id for c in await ChangeFeed(store.db).changes(str(changes[1].seq))] == ids[2:]
    await db.aclose()
