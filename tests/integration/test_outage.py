"""The database disappears while every component is busy, and comes back.

The private PostgreSQL cluster (tests/pgserver.py; never the shared server) is
stopped for OUTAGE seconds — 3 s rather than the 10 s of the requirement, to keep
the suite fast; nothing here depends on the length — while a server runs jobs,
clients wait, a durable stream is followed, the change feed is subscribed to
and progress is followed (in this process), and while a ``taskdb worker`` and a
``taskdb watch`` run as real processes. Each recovers by itself, loses nothing,
and the outage is logged once per process: one WARNING when it begins and one
INFO when it ends, never a line per poll. PostgreSQL only: SQLite is a file,
it does not go away.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

import taskdb
from taskdb import JobContext, JobQueueClient, JobQueueServer
from taskdb.streams import Finish, Phase, TextDelta
from tests.helpers import eventually
from tests.pgserver import PrivateCluster

OUTAGE = 3.0
ROOT = Path(__file__).resolve().parents[2]
BEGAN = "retrying until it is back"
ENDED = "is back after"


async def _work(value: Any, ctx: JobContext) -> Any:
    if value.get("stream"):
        for i in range(value["stream"]):
            await ctx.emit_stream_event(TextDelta("text", f"{i} "))
            await asyncio.sleep(0.1)
    await ctx.update_progress(50)
    await asyncio.sleep(value.get("sleep", 0.2))
    return value["n"]


def _outage(cluster: PrivateCluster) -> None:
    cluster.stop("fast")
    time.sleep(OUTAGE)
    cluster.start()


async def _feed(db: taskdb.Database) -> list[tuple[int, str]]:
    async with db.transaction(write=False) as conn:
        rows = await conn.execute(text("SELECT job_id, kind FROM taskdb_job_changes ORDER BY seq"))
        return [(r.job_id, r.kind) for r in rows]


async def test_in_process_components_ride_out_an_outage(
    private_pg: PrivateCluster, private_pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="taskdb")
    db = taskdb.connect(private_pg_url)
    client = JobQueueClient(db, "q", poll_interval=0.05)
    seen: list[tuple[int, str]] = []
    progress: list[float] = []
    unsubscribe = await client.subscribe_to_changes(lambda c: seen.append((c.job_id, c.kind)))
    server = JobQueueServer(db, "q", _work, workers=4, poll_interval=0.05, lease_seconds=30)
    await server.start()
    try:
        streamed = await client.submit({"n": -1, "stream": 50}, durable_stream=True)
        unfollow = streamed.on_progress(lambda p, m, d: progress.append(p))
        handles = await client.submit_batch([{"n": n} for n in range(40)])
        waits = asyncio.gather(*(h.wait(timeout=60) for h in [streamed, *handles]))

        async def follow() -> list[tuple[int, Any]]:
            return [item async for item in client.follow(streamed.id)]

        following = asyncio.ensure_future(follow())
        await asyncio.sleep(0.5)  # every component is busy
        await asyncio.to_thread(_outage, private_pg)
        late = await client.submit({"n": 40})  # once it is back
        results = await asyncio.wait_for(waits, 60)
        assert await late.wait(timeout=30) == 40
        events = await asyncio.wait_for(following, 30)
    finally:
        await server.stop(timeout=10)
    assert results == [-1, *range(40)]
    offsets = [offset for offset, _ in events]
    assert offsets == list(range(len(offsets)))  # no gap, no duplicate
    last_attempt = [e for _, e in events]
    while any(isinstance(e, Phase) for e in last_attempt):  # a retried attempt restarts
        last_attempt = last_attempt[[isinstance(e, Phase) for e in last_attempt].index(True) + 1 :]
    assert [e.text for e in last_attempt if isinstance(e, TextDelta)] == [
        f"{i} " for i in range(50)
    ]
    assert isinstance(last_attempt[-1], Finish)
    feed = await _feed(db)
    await eventually(lambda: asyncio.sleep(0, len(seen)), lambda n: n >= len(feed))
    await unsubscribe()
    unfollow()
    assert sorted(seen) == sorted(feed)  # every change once ...
    for job_id in {job for job, _ in feed}:  # ... each job's in order (the feed's promise)
        assert [c for c in seen if c[0] == job_id] == [c for c in feed if c[0] == job_id]
    assert progress and progress[-1] == 50.0
    await db.aclose()
    began = [r for r in caplog.records if BEGAN in r.getMessage()]
    ended = [r for r in caplog.records if ENDED in r.getMessage()]
    assert [r.levelno for r in began] == [logging.WARNING], caplog.text
    assert [r.levelno for r in ended] == [logging.INFO], caplog.text
    retry_loops = ("claim failed", "lease maintenance", "change feed of", "following job", "LISTEN")
    noisy = [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.WARNING and r.getMessage().startswith(retry_loops)
    ]
    assert noisy == [], caplog.text


async def _ticks(db: taskdb.Database) -> list[datetime]:
    jobs = await taskdb.Admin(db).list_jobs(queue="beats", limit=1000)
    return [datetime.fromisoformat(job.input["tick"]) for job in jobs]


def _spawn(args: list[str], url: str, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "TASKDB_URL": url, "PYTHONPATH": str(ROOT)}
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "taskdb", *args], cwd=ROOT, env=env, stdout=out, stderr=out
        )


async def test_worker_watch_and_scheduler_processes_ride_out_an_outage(
    private_pg: PrivateCluster, private_pg_url: str, tmp_path: Path
) -> None:
    """Real ``taskdb worker``, ``taskdb watch`` and ``taskdb scheduler`` processes: all
    stay up, the worker runs what was submitted before and after, watch prints what
    happened after, the scheduler enqueues ticks again (one job each), and each
    logs the outage once."""
    db = taskdb.connect(private_pg_url)
    client = JobQueueClient(db, "q", poll_interval=0.05)
    worker_log, watch_log = tmp_path / "worker.log", tmp_path / "watch.log"
    worker = _spawn(
        ["worker", "tests.integration.test_outage:_work", "-q", "q", "--concurrency", "4",
         "--poll", "0.05"],
        private_pg_url, worker_log,
    )  # fmt: skip
    watch = _spawn(["watch", "--queue", "q", "--poll", "0.05"], private_pg_url, watch_log)
    scheduler_log = tmp_path / "scheduler.log"
    scheduler = _spawn(
        ["scheduler", "tests.integration.outage_app:app"], private_pg_url, scheduler_log
    )
    try:
        before = await client.submit_batch([{"n": n, "sleep": 0.3} for n in range(30)])
        await eventually(lambda: asyncio.sleep(0, watch_log.read_text()), lambda t: "claimed" in t)
        await asyncio.to_thread(_outage, private_pg)
        back = datetime.now(UTC)
        after = await client.submit({"n": 30})
        assert [await h.wait(timeout=60) for h in [*before, after]] == list(range(31))
        await eventually(
            lambda: asyncio.sleep(0, watch_log.read_text()),
            lambda t: f"job {after.id}" in t and "completed" in t.split(f"job {after.id}")[-1],
            timeout=30,
        )
        ticks = await eventually(
            lambda: _ticks(db), lambda t: any(tick > back for tick in t), timeout=30
        )
        assert len(ticks) == len(set(ticks))  # one job per tick
        assert worker.poll() is None and watch.poll() is None and scheduler.poll() is None
    finally:
        for proc in (worker, watch, scheduler):
            proc.terminate()
            proc.wait(timeout=30)
        await db.aclose()
    for log in (worker_log, watch_log, scheduler_log):
        lines = log.read_text().splitlines()
        assert sum(BEGAN in line for line in lines) == 1, log.read_text()[-3000:]
        assert sum(ENDED in line for line in lines) == 1, log.read_text()[-3000:]
        noisy = [line for line in lines if "WARNING" in line and "retrying" in line]
        assert [line for line in noisy if BEGAN not in line] == [], log.read_text()[-3000:]
