"""Following jobs from another process: the change feed, NOTIFY wake-ups, polling fallback.

Subprocesses are ``worker_proc.py`` (``--follow``, ``--wait-for`` or a server). The
NOTIFY tests give the waiting side a 30 s poll interval and a deadline of a few
seconds: only a notification can wake it in time.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import make_url

import taskdb
from taskdb import JobContext, JobQueueClient, JobQueueServer, RetryableJobError, RetryPolicy
from taskdb.store.feed import ChangeFeed
from tests.conftest import PG_ADMIN_URL
from tests.helpers import eventually
from tests.integration.procs import QUEUE, Procs, Worker

pytestmark = [
    pytest.mark.timeout(90),
    pytest.mark.skipif(sys.platform == "win32", reason="needs POSIX signals"),
]

SLOW_POLL = 30.0  # a waiter polling this slowly can only be woken in time by NOTIFY
PROMPTLY = 10.0  # seconds: the deadline for what NOTIFY should deliver


@pytest.fixture
def pg_procs(fresh_pg_url: str, tmp_path: Path) -> Iterator[Procs]:
    """``procs`` on PostgreSQL only."""
    with Procs(fresh_pg_url, tmp_path) as p:
        yield p


def _changes(worker: Worker, job_id: int | None = None) -> list[dict[str, Any]]:
    """The ``change`` lines a follower printed (of one job if given)."""
    found = [
        json.loads(line.removeprefix("change "))
        for line in worker.stdout().splitlines(keepends=True)
        if line.startswith("change ") and line.endswith("\n")
    ]
    return [c for c in found if job_id is None or c["job_id"] == job_id]


def _subscribed(worker: Worker) -> bool:
    return worker.line("subscribed") is not None


async def _stop_follower(procs: Procs, worker: Worker) -> None:
    os.kill(worker.pid, signal.SIGTERM)
    await procs.exited(worker)
    assert worker.proc.returncode == 0, worker.describe()


def _listening(url: str, pid: int) -> bool:
    """Whether process ``pid`` has its LISTEN connection up on the database of ``url``."""
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
        row = admin.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s "
            "AND application_name = %s AND state = 'idle'",
            (make_url(url).database, f"taskdb-listen:{pid}"),
        ).fetchone()
    return row is not None and row[0] == 1


async def _retry_once(value: Any, ctx: JobContext) -> Any:
    await ctx.update_progress(25.0 * ctx.job.attempts)
    if ctx.job.attempts == 1:
        raise RetryableJobError("first attempt fails")
    return value


async def _echo(value: Any, ctx: JobContext) -> Any:
    return value


NO_BACKOFF = RetryPolicy(base_seconds=0.0, jitter=0.0)


async def test_follower_in_another_process_sees_every_transition_in_order(
    db: taskdb.Database, procs: Procs
) -> None:
    follower = procs.start_follower("follower")
    await procs.wait_until(partial(_subscribed, follower), "the follower to subscribe")
    client = JobQueueClient(db, QUEUE, poll_interval=0.05)
    async with JobQueueServer(db, QUEUE, _retry_once, poll_interval=0.02, retry=NO_BACKOFF):
        handle = await client.submit({"n": 1})
        assert await handle.wait(timeout=15) == {"n": 1}
    done = await procs.wait_until(
        lambda: [c for c in _changes(follower, handle.id) if c["kind"] == "completed"],
        "the follower to see the completion",
    )
    assert done
    seen = _changes(follower, handle.id)
    assert [(c["kind"], c["status"], c["attempts"]) for c in seen] == [
        ("submitted", "PENDING", 0),
        ("claimed", "PROCESSING", 1),
        ("progress", "PROCESSING", 1),
        ("retried", "PENDING", 1),
        ("claimed", "PROCESSING", 2),
        ("progress", "PROCESSING", 2),
        ("completed", "COMPLETED", 2),
    ]
    seqs = [c["seq"] for c in seen]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    await _stop_follower(procs, follower)


async def test_a_follower_resumes_from_its_last_cursor(db: taskdb.Database, procs: Procs) -> None:
    client = JobQueueClient(db, QUEUE, poll_interval=0.05)
    first = procs.start_follower("first")
    await procs.wait_until(partial(_subscribed, first), "the first follower")
    early = await client.submit_batch([{"n": 1}, {"n": 2}])
    await procs.wait_until(lambda: len(_changes(first)) == 2, "two submissions")
    await _stop_follower(procs, first)
    seen_first = _changes(first)
    assert [c["job_id"] for c in seen_first] == [h.id for h in early]
    # While nobody follows, a job runs to the end.
    async with JobQueueServer(db, QUEUE, _echo, poll_interval=0.02):
        late = await client.submit({"n": 3})
        await late.wait(timeout=15)
        await asyncio.gather(*(h.wait(timeout=15) for h in early))
    missed = await ChangeFeed(client.db).changes(seen_first[-1]["cursor"])
    second = procs.start_follower("second", after=seen_first[-1]["cursor"])
    await procs.wait_until(
        lambda: len(_changes(second)) >= len(missed), "the second follower to catch up"
    )
    assert [(c["seq"], c["kind"]) for c in _changes(second)] == [(c.seq, c.kind) for c in missed]
    assert {c["job_id"] for c in _changes(second, late.id)} == {late.id}
    assert len(missed) == 2 * 2 + 3  # early jobs: claimed, completed; late: + submitted
    await _stop_follower(procs, second)


# -- PostgreSQL: NOTIFY --------------------------------------------------------------------


async def test_wait_in_another_process_is_woken_by_notify(
    fresh_pg_url: str, pg_procs: Procs
) -> None:
    db = taskdb.connect(fresh_pg_url)
    client = JobQueueClient(db, QUEUE)
    handle = await client.submit({"n": 1})
    waiter = pg_procs.start_waiter("waiter", handle.id, timeout=60, poll=SLOW_POLL)
    await pg_procs.wait_until(
        lambda: _listening(fresh_pg_url, waiter.pid), "the waiter to listen", timeout=20
    )
    async with JobQueueServer(db, QUEUE, _echo, poll_interval=0.02):
        await pg_procs.exited(waiter, timeout=PROMPTLY)
    assert waiter.payload("result") == {"output": {"n": 1}}
    await db.aclose()


async def test_an_idle_worker_in_another_process_is_woken_by_notify(
    fresh_pg_url: str, pg_procs: Procs
) -> None:
    worker = pg_procs.start("worker", poll=SLOW_POLL)
    await pg_procs.ready(worker)
    await pg_procs.wait_until(
        lambda: _listening(fresh_pg_url, worker.pid), "the worker to listen", timeout=20
    )
    db = taskdb.connect(fresh_pg_url)
    client = JobQueueClient(db, QUEUE)
    # The first job may meet the claim that follows the LISTEN; the second finds the
    # worker idle for its 30 s poll interval.
    for n in (1, 2):
        handle = await client.submit({"n": n})
        assert await handle.wait(timeout=PROMPTLY) == {"pid": worker.pid, "echo": {"n": n}}
    await pg_procs.terminate(worker)
    await db.aclose()


async def test_without_listen_waits_still_end_by_polling(
    fresh_pg_url: str, pg_procs: Procs, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TASKDB_LISTEN", "0")  # the subprocess inherits it
    db = taskdb.connect(fresh_pg_url)
    assert db.listener() is None
    client = JobQueueClient(db, QUEUE, poll_interval=0.1)
    handle = await client.submit({"n": 1})
    waiter = pg_procs.start_waiter("waiter", handle.id, poll=0.1)
    await pg_procs.wait_until(partial(waiter.line, "waiting"), "the waiter to wait")
    async with JobQueueServer(db, QUEUE, _echo, poll_interval=0.1):
        assert await handle.wait(timeout=15) == {"n": 1}
        await pg_procs.exited(waiter, timeout=15)
    assert waiter.payload("result") == {"output": {"n": 1}}
    assert not _listening(fresh_pg_url, os.getpid())
    await db.aclose()


async def test_listen_can_be_turned_off(db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    on = taskdb.connect(db_url)
    assert (on.listener() is not None) == db_url.startswith("postgresql")
    assert taskdb.connect(db_url, listen=False).listener() is None
    monkeypatch.setenv("TASKDB_LISTEN", "off")
    assert taskdb.connect(db_url).listener() is None
    assert (taskdb.connect(db_url, listen=True).listener() is not None) == on.listen
    await on.aclose()


async def test_notifications_wake_only_their_queue_and_kind(fresh_pg_url: str) -> None:
    db = taskdb.connect(fresh_pg_url)
    listener = db.listener()
    assert listener is not None
    changed, work, sentinel = asyncio.Event(), asyncio.Event(), asyncio.Event()
    listener.watch("q", changed)
    listener.watch("q", work, work=True)
    listener.watch("sentinel", sentinel)
    await asyncio.wait_for(listener.listening(), PROMPTLY)
    for event in (changed, work, sentinel):
        event.clear()  # each was woken once when LISTEN began
    client = JobQueueClient(db, "q")
    handle = await client.submit({})
    await asyncio.wait_for(work.wait(), PROMPTLY)  # a submission is work ...
    assert changed.is_set()
    changed.clear()
    work.clear()
    await client.abort(handle.id)  # ... an abort is not
    await JobQueueClient(db, "sentinel").submit({})  # notified after the abort
    await asyncio.wait_for(sentinel.wait(), PROMPTLY)
    assert changed.is_set() and not work.is_set()
    await db.aclose()


async def test_the_listener_survives_a_killed_backend(fresh_pg_url: str) -> None:
    db = taskdb.connect(fresh_pg_url)
    client = JobQueueClient(db, "q", poll_interval=SLOW_POLL)
    seen: list[taskdb.JobChange] = []
    unsubscribe = await client.subscribe_to_changes(seen.append)
    listener = db.listener()
    assert listener is not None
    await asyncio.wait_for(listener.listening(), PROMPTLY)
    killed = listener.backend_pid
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (killed,))
    await eventually(
        lambda: asyncio.sleep(0, listener.backend_pid), lambda pid: pid not in (None, killed)
    )
    other = taskdb.connect(fresh_pg_url)  # another Database: no in-process shortcut
    handle = await JobQueueClient(other, "q").submit({})
    await eventually(
        lambda: asyncio.sleep(0, seen), lambda s: [c.job_id for c in s] == [handle.id], PROMPTLY
    )
    await unsubscribe()
    await other.aclose()
    await db.aclose()


async def test_unsubscribe_stops_callbacks_and_lets_go_of_the_database(db_url: str) -> None:
    db = taskdb.connect(db_url)
    client = JobQueueClient(db, "q", poll_interval=0.01)
    seen: list[taskdb.JobChange] = []
    unsubscribe = await client.subscribe_to_changes(seen.append)
    first = await client.submit({})
    await eventually(lambda: asyncio.sleep(0, seen), lambda s: len(s) == 1, PROMPTLY)
    await unsubscribe()
    after: list[taskdb.JobChange] = []
    later = await client.subscribe_to_changes(after.append)
    second = await client.submit({})
    # a live subscription saw the second job: the stopped one had the same chance
    await eventually(lambda: asyncio.sleep(0, after), lambda s: len(s) == 1, PROMPTLY)
    assert after[0].job_id == second.id
    assert [c.job_id for c in seen] == [first.id]
    await later()
    await db.aclose()
