"""Failure paths: the database goes away and comes back, lock contention, bad rows."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from collections.abc import AsyncIterator, Awaitable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import psycopg
import pytest
from sqlalchemy import make_url, select, text

import taskdb
from taskdb import (
    ConcurrencyLimiter,
    JobContext,
    JobQueueClient,
    JobQueueServer,
    NullLimiter,
)
from taskdb.core.jobs import Claim, JobStatus
from taskdb.core.retry import Complete
from taskdb.store.jobs import JobStore
from taskdb.store.schema import jobs
from tests.conftest import PG_ADMIN_URL
from tests.helpers import eventually, outside_writer
from tests.integration.conftest import FAST

T = TypeVar("T")


async def test_postgres_connections_killed_mid_run(fresh_pg_url: str) -> None:
    """Every backend of the database is terminated repeatedly while jobs run."""
    db = taskdb.connect(fresh_pg_url)
    client = JobQueueClient(db, "q", poll_interval=0.02)
    handled: list[Any] = []

    async def work(value: Any, ctx: JobContext) -> Any:
        handled.append(value)
        await asyncio.sleep(0.01)
        return value

    name = make_url(fresh_pg_url).database
    base = make_url(fresh_pg_url).set(database="postgres").render_as_string(hide_password=False)

    def kill_backends() -> None:
        with psycopg.connect(base.replace("+psycopg", ""), autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            )

    server = JobQueueServer(db, "q", work, workers=4, poll_interval=0.02, lease_seconds=10)
    await server.start()
    try:
        handles = await client.submit_batch(list(range(200)))
        for _ in range(5):
            await asyncio.to_thread(kill_backends)
            await asyncio.sleep(0.1)
        # the client's own connections were killed too: it recovers on its next call
        results = [await h.wait(timeout=30) for h in handles]
    finally:
        await server.stop(timeout=5)
        await db.aclose()
    assert results == list(range(200))
    assert sorted(set(handled)) == list(range(200))


async def test_killed_idle_connection_costs_the_caller_nothing(fresh_pg_url: str) -> None:
    """Pools do not ping: a dead pooled connection is found on use and retried once."""
    db = taskdb.connect(fresh_pg_url)
    client = JobQueueClient(db, "q")
    handle = await client.submit({"n": 1})
    name = make_url(fresh_pg_url).database
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
        killed = admin.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        ).fetchone()
    assert killed is not None and killed[0] >= 1
    assert (await client.get(handle.id)).input == {"n": 1}  # no error reaches the caller
    assert (await client.submit({"n": 2})).id > handle.id
    await db.aclose()


async def test_killed_connection_under_a_worker_write_is_retried(fresh_pg_url: str) -> None:
    """Claims and outcomes run on the pooled psycopg connection itself: a dead one
    is invalidated in the pool and the write retried once, as for any statement."""
    db = taskdb.connect(fresh_pg_url)
    store = JobStore(db)
    await JobQueueClient(db, "q").submit_batch([1, 2])
    now = datetime.now(UTC)
    (first,) = await store.claim("q", "w", 1, now, 30)
    name = make_url(fresh_pg_url).database
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        )
    (second,) = await store.claim("q", "w", 1, now, 30)  # no error reaches the caller
    done = await store.finish("w", [(Claim(second.id, second.attempts), Complete(2))], now)
    assert (first.input, second.input, done) == (1, 2, {second.id: JobStatus.COMPLETED})
    await db.aclose()


_READY_FOR_QUERY = b"Z\x00\x00\x00\x05"  # the protocol message ending every answer


class CuttingProxy:
    """A TCP proxy in front of PostgreSQL that cuts its connections as a network or a
    middlebox would (no word from the server): all at once (:meth:`cut_all`, an idle
    timeout), or right after it forwards a message holding ``cut_after`` (the server
    gets the statement; its client never gets the answer), or once the server has
    answered a message holding ``lose_answer_to`` (the statement ran to the end, and
    committed if it ran alone; its client never gets the answer)."""

    def __init__(self, url: str) -> None:
        parsed = make_url(url)
        self._upstream = (parsed.host or "127.0.0.1", parsed.port or 5432)
        self._url = parsed
        self.cut_after: bytes | None = None
        self.lose_answer_to: bytes | None = None
        self.pairs: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self.url = ""

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[CuttingProxy]:
        server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        self.url = self._url.set(host="127.0.0.1", port=port).render_as_string(False)
        try:
            yield self
        finally:
            await self.cut_all()
            server.close()

    async def cut_all(self) -> None:
        """Cut every connection; returns once their sockets are closed."""
        pairs = list(self.pairs)
        for pair in pairs:
            self._cut(pair)
        with contextlib.suppress(ConnectionError, OSError):
            await asyncio.gather(*(w.wait_closed() for pair in pairs for w in pair))

    def _cut(self, pair: tuple[asyncio.StreamWriter, asyncio.StreamWriter]) -> None:
        client, upstream = pair
        self.pairs.discard(pair)
        client.transport.abort()
        upstream.close()  # (after what was forwarded: the server reads it all)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self._upstream)
        pair = (writer, up_writer)
        self.pairs.add(pair)
        losing = False

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, up: bool) -> None:
            nonlocal losing
            seen = b""
            with contextlib.suppress(ConnectionError, OSError):
                while pair in self.pairs and (data := await src.read(65536)):
                    if losing and not up:  # swallow the answer up to ReadyForQuery
                        seen = (seen + data)[-6:]
                        if seen[:5] == _READY_FOR_QUERY:
                            break
                        continue
                    dst.write(data)
                    await dst.drain()
                    if up and self.lose_answer_to is not None and self.lose_answer_to in data:
                        self.lose_answer_to = None
                        losing = True
                    if up and self.cut_after is not None and self.cut_after in data:
                        self.cut_after = None
                        break
            if pair in self.pairs:
                self._cut(pair)

        await asyncio.gather(pump(reader, up_writer, True), pump(up_reader, writer, False))


async def _count_marked(url: str, marker: str) -> int:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        row = await (
            await conn.execute("SELECT count(*) FROM taskdb_jobs WHERE input->>'m' = %s", (marker,))
        ).fetchone()
    assert row is not None
    return int(row[0])


async def test_a_submit_cut_off_in_flight_is_not_run_twice(fresh_pg_url: str) -> None:
    """A plain submit is one statement in autocommit: once sent, a lost connection
    leaves it in doubt (it may have committed), so it is not run again; the caller
    gets an error that says so. (Retried, it enqueued the job twice.)"""
    async with CuttingProxy(fresh_pg_url).serving() as proxy:
        db = taskdb.connect(proxy.url)
        client = JobQueueClient(db, "q")
        await client.submit({"m": "warm"})  # schema checked, a pooled connection open
        proxy.cut_after = b"cut-here"
        with pytest.raises(taskdb.StorageError, match="may or may not have been stored"):
            await client.submit({"m": "cut-here"})
        # the server got the statement and committed it: one job, not two
        await eventually(lambda: _count_marked(fresh_pg_url, "cut-here"), lambda n: n == 1)
        with pytest.raises(taskdb.StorageError, match="may or may not have been stored"):
            proxy.cut_after = b"cut-sync"
            await asyncio.to_thread(taskdb.SyncJobQueueClient(db, "q").submit, {"m": "cut-sync"})
        await eventually(lambda: _count_marked(fresh_pg_url, "cut-sync"), lambda n: n == 1)
        # a fingerprinted submit runs in a transaction: rolled back, so retried at once
        proxy.cut_after = b"cut-keyed"
        await client.submit({"m": "cut-keyed"}, fingerprint="k")
        assert await _count_marked(fresh_pg_url, "cut-keyed") == 1
        await db.aclose()


async def test_a_submit_whose_backend_the_server_ended_is_run_again(fresh_pg_url: str) -> None:
    """The server says when it ends a session (pg_terminate_backend, a shutdown): the
    statement it was running rolled back, so the submit runs again, once."""
    db = taskdb.connect(fresh_pg_url)
    client = JobQueueClient(db, "q")
    await client.submit({"m": "warm"})
    await _ended_while_waiting(fresh_pg_url, client.submit({"m": "ended"}), "INSERT INTO")
    assert await _count_marked(fresh_pg_url, "ended") == 1
    await db.aclose()


async def _ended_while_waiting(url: str, write: Awaitable[T], statement: str) -> T:
    """Run ``write`` while the jobs table is locked; once its ``statement`` (the
    start of its SQL) waits for the lock, end its backend with pg_terminate_backend,
    and return what ``write`` returns once it ran again on a new connection."""
    name = make_url(url).database
    with psycopg.connect(url, autocommit=True) as locker:
        locker.execute("BEGIN")
        locker.execute("LOCK TABLE taskdb_jobs IN EXCLUSIVE MODE")
        writing = asyncio.ensure_future(write)

        async def waiting() -> list[Any]:
            with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
                return admin.execute(
                    "SELECT pid FROM pg_stat_activity WHERE datname = %s "
                    "AND wait_event_type = 'Lock' AND query LIKE %s",
                    (name, f"%{statement} taskdb_jobs%"),
                ).fetchall()

        ((pid,),) = await eventually(waiting, lambda rows: len(rows) == 1)
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        # the retry waits for the lock on a new connection
        await eventually(waiting, lambda rows: len(rows) == 1 and rows[0][0] != pid)
        locker.execute("COMMIT")
    return await asyncio.wait_for(writing, 10)


async def test_a_pooled_connection_cut_while_idle_is_replaced_before_use(
    fresh_pg_url: str,
) -> None:
    """No statement goes out on a connection the network already closed: the pool's
    checkout polls its socket, so even a write that must not run twice costs the
    caller nothing."""
    async with CuttingProxy(fresh_pg_url).serving() as proxy:
        db = taskdb.connect(proxy.url)
        client = JobQueueClient(db, "q")
        await client.submit({"m": "before"})
        sync = taskdb.SyncJobQueueClient(db, "q")
        await asyncio.to_thread(sync.submit, {"m": "before-sync"})
        assert proxy.pairs
        await proxy.cut_all()  # as a proxy's idle timeout would, with no word from the server
        await client.submit({"m": "after"})
        await asyncio.to_thread(sync.submit, {"m": "after-sync"})
        for marker in ("after", "after-sync"):
            assert await _count_marked(fresh_pg_url, marker) == 1
        await db.aclose()


async def _jobs_by_status(url: str) -> dict[str, list[tuple[int, int]]]:
    """(id, attempts) of every job, by status."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        rows = await (
            await conn.execute("SELECT status, id, attempts FROM taskdb_jobs ORDER BY id")
        ).fetchall()
    found: dict[str, list[tuple[int, int]]] = {}
    for status, job_id, attempts in rows:
        found.setdefault(status, []).append((job_id, attempts))
    return found


async def test_worker_writes_whose_answer_was_lost_return_what_they_wrote(
    fresh_pg_url: str,
) -> None:
    """A claim, and a batch of outcomes with a claim riding on it, are one statement in
    autocommit: it can commit and its answer be lost with the connection. Run again,
    a claim stranded the jobs it took until their lease ran out (an attempt counted
    that never ran) and outcomes were fenced off by themselves; now each looks for
    what it wrote first."""
    worker = "w-cut"
    async with CuttingProxy(fresh_pg_url).serving() as proxy:
        db = taskdb.connect(proxy.url)
        store = JobStore(db)
        await JobQueueClient(db, "q").submit_batch([1, 2, 3, 4, 5])
        proxy.lose_answer_to = worker.encode()
        took = await store.claim_rows("q", worker, 2, datetime.now(UTC), 30)
        assert proxy.lose_answer_to is None  # (the answer was lost)
        assert [(r.id, r.attempts, r.input) for r in took] == [(1, 1, 1), (2, 1, 2)]
        assert (await _jobs_by_status(fresh_pg_url))["PROCESSING"] == [(1, 1), (2, 1)]

        proxy.lose_answer_to = worker.encode()
        done = [(Claim(r.id, r.attempts), Complete(r.input)) for r in took]
        statuses, took = await store.finish_and_claim(
            worker, done, datetime.now(UTC), queue="q", limit=2, lease_seconds=30
        )
        assert proxy.lose_answer_to is None
        assert statuses == {1: JobStatus.COMPLETED, 2: JobStatus.COMPLETED}
        assert [(r.id, r.attempts) for r in took] == [(3, 1), (4, 1)]

        proxy.lose_answer_to = worker.encode()
        done = [(Claim(r.id, r.attempts), Complete(r.input)) for r in took]
        assert await store.finish(worker, done, datetime.now(UTC)) == {
            3: JobStatus.COMPLETED,
            4: JobStatus.COMPLETED,
        }
        assert proxy.lose_answer_to is None
        assert await _jobs_by_status(fresh_pg_url) == {
            "COMPLETED": [(1, 1), (2, 1), (3, 1), (4, 1)],
            "PENDING": [(5, 0)],
        }
        await db.aclose()


async def _statements_running(url: str) -> int:
    """Other sessions of the database that are running a statement."""
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
        row = admin.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND state <> 'idle' "
            "AND pid <> pg_backend_pid()",
            (make_url(url).database,),
        ).fetchone()
    assert row is not None
    return int(row[0])


async def test_a_claim_cut_off_in_flight_strands_no_job(fresh_pg_url: str) -> None:
    """Cut off as it is sent, a claim may commit before or after its worker looks for
    what it wrote: whatever it took that the worker never learnt of is a stray the
    worker gives back, uncounted; outcomes are written once either way."""
    worker = "w-cut"
    async with CuttingProxy(fresh_pg_url).serving() as proxy:
        db = taskdb.connect(proxy.url)
        store = JobStore(db)
        await JobQueueClient(db, "q").submit_batch(list(range(6)))
        proxy.cut_after = worker.encode()
        took = await store.claim_rows("q", worker, 2, datetime.now(UTC), 30)
        proxy.cut_after = worker.encode()
        done = [(Claim(r.id, r.attempts), Complete(r.input)) for r in took]
        statuses, took = await store.finish_and_claim(
            worker, done, datetime.now(UTC), queue="q", limit=2, lease_seconds=30
        )
        assert statuses == {claim.job_id: JobStatus.COMPLETED for claim, _ in done}
        await eventually(lambda: _statements_running(fresh_pg_url), lambda n: n == 0)
        known = [Claim(r.id, r.attempts) for r in took]
        later = datetime.now(UTC) + timedelta(seconds=30)
        await store.release_strays(worker, known, later, 30)
        jobs_now = await _jobs_by_status(fresh_pg_url)
        assert jobs_now.keys() <= {"PROCESSING", "COMPLETED", "PENDING"}
        assert jobs_now.get("PROCESSING", []) == [(c.job_id, 1) for c in known]
        assert jobs_now["COMPLETED"] == [(claim.job_id, 1) for claim, _ in done]
        pending = [attempts for _, attempts in jobs_now.get("PENDING", [])]
        assert pending == [0] * (6 - len(done) - len(known))
        await db.aclose()


async def test_a_claim_whose_backend_the_server_ended_is_run_again(fresh_pg_url: str) -> None:
    """A claim the server ended rolled back: it finds nothing it wrote, and runs again."""
    db = taskdb.connect(fresh_pg_url)
    store = JobStore(db)
    await JobQueueClient(db, "q").submit_batch([1, 2])
    claim = store.claim_rows("q", "w", 5, datetime.now(UTC), 30)
    took = await _ended_while_waiting(fresh_pg_url, claim, "UPDATE")
    assert [(r.id, r.attempts) for r in took] == [(1, 1), (2, 1)]
    await db.aclose()


async def test_a_claim_returning_jobs_already_running_here_starts_them_once(
    db: taskdb.Database, client: JobQueueClient
) -> None:
    """A claim that finds what it wrote may, with a clock that stood still, also find
    an earlier claim's jobs: the server does not start an attempt it already runs."""
    await client.submit_batch([1, 2])
    started: list[Any] = []
    release = asyncio.Event()

    async def hold(value: Any, ctx: JobContext) -> Any:
        started.append(value)
        await release.wait()
        return value

    server = JobQueueServer(db, "q", hold, **{**FAST, "workers": 4})
    await server.start()
    try:
        await eventually(lambda: asyncio.sleep(0, len(started)), lambda n: n == 2)
        async with db.transaction(write=False) as conn:
            rows = (
                await conn.execute(
                    select(*jobs.c).where(jobs.c.worker_id == server.worker_id).order_by(jobs.c.id)
                )
            ).all()
        assert len(rows) == 2
        assert await server.accept(rows) == 0
        release.set()
        assert await client.wait(rows[0].id, timeout=10) == 1
    finally:
        release.set()
        await server.stop(timeout=5)
    assert sorted(started) == [1, 2]
    assert server.stats().lost == 0


async def test_a_run_whose_outcome_broke_is_left_to_its_lease_not_given_back(
    db: taskdb.Database, client: JobQueueClient, caplog: pytest.LogCaptureFixture
) -> None:
    """A job whose outcome could not be written because of an error is no stray: it
    waits for its lease and the reaper, which count the attempt (given back
    uncounted, a job breaking its worker the same way would run for ever)."""
    handle = await client.submit(1)

    async def echo(value: Any, ctx: JobContext) -> Any:
        return value

    server = JobQueueServer(db, "q", echo, **{**FAST, "workers": 1})

    async def broken(claim: Claim, outcome: Any) -> Any:
        raise RuntimeError("the outcome writer broke")

    server._outcomes.record = broken  # type: ignore[method-assign]
    await server.start()
    try:
        await eventually(
            lambda: asyncio.sleep(0, caplog.text), lambda t: "unexpected error in the server" in t
        )
        known = server.known_claims()
        assert known == [Claim(handle.id, 1)]
        later = datetime.now(UTC) + timedelta(seconds=60)
        store = JobStore(db)
        assert await store.release_strays(server.worker_id, known, later, 30) == []
        assert await store.release_strays(server.worker_id, [], later, 30) == [handle.id]
    finally:
        await server.stop(timeout=5)


async def test_postgres_down_gives_storage_error_then_recovers(fresh_pg_url: str) -> None:
    bad = taskdb.connect(fresh_pg_url.replace(":5432", ":1"))
    with pytest.raises(taskdb.StorageError, match="unavailable"):
        await JobQueueClient(bad, "q").submit({})
    await bad.aclose()


async def test_sqlite_writer_lock_never_reaches_callers(fresh_sqlite_url: str) -> None:
    """Another process-like connection holds the write lock for a while."""
    path = make_url(fresh_sqlite_url).database
    assert path
    db = taskdb.connect(fresh_sqlite_url)
    client = JobQueueClient(db, "q", poll_interval=0.02)

    async def work(value: Any, ctx: JobContext) -> Any:
        await ctx.update_progress(50)
        return value * 2

    locked, release = threading.Event(), threading.Event()

    def hold_lock() -> None:
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("BEGIN EXCLUSIVE")
        locked.set()
        release.wait(10)
        conn.execute("COMMIT")
        conn.close()

    server = JobQueueServer(db, "q", work, workers=4, poll_interval=0.02)
    await server.start()
    try:
        first = await client.submit_batch(list(range(20)))
        holder = threading.Thread(target=hold_lock)
        holder.start()
        await asyncio.to_thread(locked.wait, 5)
        submitting = asyncio.ensure_future(client.submit_batch(list(range(20, 40))))
        await asyncio.sleep(1.0)  # writers queue on the busy timeout meanwhile
        release.set()
        holder.join()
        handles = [*first, *await submitting]
        assert [await h.wait(timeout=30) for h in handles] == [i * 2 for i in range(40)]
    finally:
        release.set()
        await server.stop(timeout=5)
        await db.aclose()


async def test_failed_claims_give_their_limiter_slots_back(
    db: taskdb.Database, client: JobQueueClient, caplog: pytest.LogCaptureFixture
) -> None:
    """While the jobs table is away every claim fails; what each reserved from the
    ConcurrencyLimiter comes back, so jobs run again once the table is back."""
    limiter = ConcurrencyLimiter(2)

    async def rename(old: str, new: str) -> None:
        async with db.transaction() as conn:
            await conn.execute(text(f"ALTER TABLE {old} RENAME TO {new}"))

    async def echo(value: Any, ctx: JobContext) -> Any:
        return value

    await rename("taskdb_jobs", "taskdb_jobs_away")
    server = JobQueueServer(db, "q", echo, limiter=limiter, **{**FAST, "workers": 2})
    await server.start()
    try:
        await eventually(
            lambda: asyncio.sleep(0, caplog.text), lambda t: t.count("claim failed") >= 2
        )
        await rename("taskdb_jobs_away", "taskdb_jobs")
        handles = await client.submit_batch([1, 2, 3])
        assert [await h.wait(timeout=10) for h in handles] == [1, 2, 3]
    finally:
        await server.stop(timeout=5)
    assert limiter.active == 0


class _Announcing(NullLimiter):
    """Grants every claim and says when the first one is about to run."""

    def __init__(self) -> None:
        self.reserved = asyncio.Event()

    async def reserve(self, want: int, now: datetime) -> int:
        self.reserved.set()
        return want


async def test_stop_while_a_claim_waits_gives_its_jobs_back(
    db: taskdb.Database, db_url: str, client: JobQueueClient
) -> None:
    """stop() lets a claim in flight return rather than cancel it (a cancelled
    claim may still commit and hold its jobs until the lease expires)."""
    handle = await client.submit(1)
    locker = outside_writer(db_url)  # SQLite: holds the write lock
    if db.dialect == "postgresql":
        locker.execute("LOCK TABLE taskdb_jobs IN EXCLUSIVE MODE")
    limiter = _Announcing()

    async def never(value: Any, ctx: JobContext) -> Any:
        raise AssertionError("a stopping server started a job")

    server = JobQueueServer(db, "q", never, limiter=limiter, **{**FAST, "workers": 1})
    try:
        await server.start()
        await asyncio.wait_for(limiter.reserved.wait(), 10)
        stopping = asyncio.ensure_future(server.stop(timeout=10))
        await asyncio.sleep(0)  # stop() has begun: the claim's jobs are not to run
    finally:
        locker.commit()
        locker.close()
    await stopping
    job = await handle.get()
    assert (job.status, job.attempts, job.worker_id) == (JobStatus.PENDING, 0, None)
    assert server.stats().released == 1


async def test_malformed_row_is_a_clear_error(db: taskdb.Database) -> None:
    client = JobQueueClient(db, "q")
    handle = await client.submit({})
    async with db.transaction() as conn:
        await conn.execute(text("UPDATE taskdb_jobs SET status = 'EXPLODED'"))
    with pytest.raises(taskdb.StorageError, match="malformed Job row: status"):
        await client.get(handle.id)


async def test_schema_behind_head_is_reported(empty_db_url: str) -> None:
    db = taskdb.connect(empty_db_url)
    with pytest.raises(taskdb.SchemaOutOfDate, match="taskdb migrate"):
        await JobQueueClient(db, "q").submit({})
    await db.aclose()
    db.migrate()
    db.downgrade("base")
    with pytest.raises(taskdb.SchemaOutOfDate):
        await JobQueueClient(db, "q").get(1)
    await db.aclose()


async def test_followers_survive_a_database_outage(fresh_pg_url: str) -> None:
    """Connections are refused for a while: subscriptions and progress followers
    keep their place and deliver what happens after the database is back."""
    db = taskdb.connect(fresh_pg_url)
    client = JobQueueClient(db, "q", poll_interval=0.05)
    seen: list[tuple[int, str]] = []
    progress: list[float] = []
    unsubscribe = await client.subscribe_to_changes(lambda c: seen.append((c.job_id, c.kind)))
    first = await client.submit({"n": 1})
    unfollow = first.on_progress(lambda p, m, d: progress.append(p))
    await eventually(lambda: asyncio.sleep(0, seen), lambda s: (first.id, "submitted") in s)
    name = make_url(fresh_pg_url).database
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
            (name,),
        )
        await asyncio.sleep(0.5)  # several failed polls of both followers
        admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
    second = await client.submit({"n": 2})
    async with JobQueueServer(db, "q", _report_half, poll_interval=0.02):
        await first.wait(timeout=10)
        await second.wait(timeout=10)
        await eventually(lambda: asyncio.sleep(0, seen), lambda s: (second.id, "completed") in s)
        await eventually(lambda: asyncio.sleep(0, progress), lambda p: p == [50.0])
    await unsubscribe()
    unfollow()
    assert (second.id, "submitted") in seen and (first.id, "completed") in seen
    await db.aclose()


async def _report_half(value: Any, ctx: JobContext) -> Any:
    await ctx.update_progress(50)
    return value
