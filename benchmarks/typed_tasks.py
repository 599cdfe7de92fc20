"""Typed tasks: what validation costs, against the raw client in the same run.

For each dialect (a scratch database: PostgreSQL ``CREATE DATABASE``, an SQLite
file in a temporary directory), interleaved, ``--repeat`` times each, raw first
on even runs and typed first on odd ones:

- enqueue, one at a time: ``task.defer(...)`` (sync) against
  ``SyncJobQueueClient.submit``, and ``await task.defer_async(...)`` against
  ``await JobQueueClient.submit`` (``--single`` jobs each);
- enqueue, batched: ``task.defer_many(...)`` against
  ``SyncJobQueueClient.submit_batch`` and ``defer_many_async`` against
  ``JobQueueClient.submit_batch`` (``--jobs`` jobs, calls of 1,000).
  Every path (sync and async, on the async side in its own event loop) is warmed
  up untimed first, and every timed section starts on emptied job tables
  (PostgreSQL ``TRUNCATE``, SQLite ``DELETE`` + ``VACUUM`` + WAL checkpoint), so
  neither side inserts into rows the other left;
- worker CPU per job: one worker process (``JobQueueServer(workers=32)``) runs
  ``--jobs`` jobs of a typed ``async def`` task (three validated arguments, a
  pydantic model returned) and then as many of a raw handler doing the same
  work on a dict, each on its own fresh scratch database; each worker reports
  its own CPU time (``time.process_time``).

Every run counts: the report gives the median and the min-max of all of them.
The typed payload is ``{"url": str, "width": int, "tags": list[str]}``, the raw
one the same dict. Target: validation costs under 20% on batches (typed time
per job <= 1.2x raw).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
from pydantic import BaseModel

import taskdb

DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
QUEUE = "bench"
TARGET = 1.2  # typed time per job over raw, batched


class Thumb(BaseModel):
    url: str
    width: int
    tags: list[str]


app = taskdb.App()


@app.task(queue=QUEUE, name="bench.thumb")
async def thumb(url: str, width: int, tags: list[str]) -> Thumb:
    return Thumb(url=url, width=width, tags=tags)


async def raw_thumb(value: Any, ctx: taskdb.JobContext) -> Any:
    return {"url": value["url"], "width": value["width"], "tags": value["tags"]}


def _args(i: int) -> dict[str, Any]:
    return {"url": f"https://example.com/{i}.png", "width": 100 + i % 50, "tags": ["a", "b"]}


# -- scratch databases ---------------------------------------------------------------------


@contextlib.contextmanager
def _scratch(dialect: str, pg_url: str) -> Iterator[str]:
    if dialect == "sqlite":
        with tempfile.TemporaryDirectory(prefix="typedbench-") as tmp:
            url = f"sqlite:///{tmp}/bench.sqlite3"
            taskdb.connect(url).migrate()
            yield url
        return
    name = f"qbench_typed_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = pg_url.rsplit("/", 1)[0] + "/" + name
    try:
        taskdb.connect(url).migrate()
        yield url
    finally:
        with psycopg.connect(pg_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# -- enqueue -------------------------------------------------------------------------------


def _timed(work: Callable[[], object]) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


async def _timed_async(work: Callable[[], Awaitable[object]]) -> float:
    started = time.perf_counter()
    await work()
    return time.perf_counter() - started


def _empty(url: str) -> None:
    """Untimed: empty the tables a submit writes, so the next timed section starts
    from the same state whichever side ran before it."""
    if url.startswith("sqlite"):
        with contextlib.closing(sqlite3.connect(url.removeprefix("sqlite:///"), timeout=30)) as c:
            c.execute("DELETE FROM taskdb_jobs")
            c.execute("DELETE FROM taskdb_job_changes")
            c.commit()
            # Without VACUUM the freed pages would be reused by whichever side runs
            # next, while the side before it had to grow the file.
            c.execute("VACUUM")
            c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET lock_timeout = '30s'")
        conn.execute("TRUNCATE taskdb_jobs, taskdb_job_changes")


def _enqueue(url: str, single: int, batch: int, typed_first: bool) -> dict[str, float]:
    """Seconds per job of each way to enqueue, every section on emptied tables."""
    db = taskdb.connect(url)
    app.bind(db)
    sync = taskdb.SyncJobQueueClient(db, QUEUE)
    per_job: dict[str, float] = {}
    calls = [_args(i) for i in range(batch)]
    chunks = [calls[i : i + 1000] for i in range(0, batch, 1000)]
    order = ("typed", "raw") if typed_first else ("raw", "typed")

    # Warm every sync path up (untimed): connection, statements, one full-size chunk.
    sync.submit(_args(0), task="bench.thumb")
    thumb.defer(**_args(0))
    sync.submit_batch(chunks[0], task="bench.thumb")
    thumb.defer_many(chunks[0])

    def raw_sync() -> None:
        for i in range(single):
            sync.submit(_args(i), task="bench.thumb")

    def typed_sync() -> None:
        for i in range(single):
            thumb.defer(**_args(i))

    def raw_sync_batched() -> None:
        for chunk in chunks:
            sync.submit_batch(chunk, task="bench.thumb")

    def typed_sync_batched() -> None:
        for chunk in chunks:
            thumb.defer_many(chunk)

    sync_work = {
        "sync one at a time": ({"raw": raw_sync, "typed": typed_sync}, single),
        "sync batched": ({"raw": raw_sync_batched, "typed": typed_sync_batched}, batch),
    }
    for how, (work, n) in sync_work.items():
        for kind in order:
            _empty(url)
            per_job[f"{how}, {kind}"] = _timed(work[kind]) / n

    async def asynchronous() -> None:
        # Async engines are per event loop: this loop's is created and connected here,
        # by an untimed warm-up of every async path.
        client = taskdb.JobQueueClient(db, QUEUE)
        await client.submit(_args(0), task="bench.thumb")
        await thumb.defer_async(**_args(0))
        await client.submit_batch(chunks[0], task="bench.thumb")
        await thumb.defer_many_async(chunks[0])

        async def raw_async() -> None:
            for i in range(single):
                await client.submit(_args(i), task="bench.thumb")

        async def typed_async() -> None:
            for i in range(single):
                await thumb.defer_async(**_args(i))

        async def raw_async_batched() -> None:
            for chunk in chunks:
                await client.submit_batch(chunk, task="bench.thumb")

        async def typed_async_batched() -> None:
            for chunk in chunks:
                await thumb.defer_many_async(chunk)

        async_work = {
            "async one at a time": ({"raw": raw_async, "typed": typed_async}, single),
            "async batched": ({"raw": raw_async_batched, "typed": typed_async_batched}, batch),
        }
        for how, (work, n) in async_work.items():
            for kind in order:
                _empty(url)
                per_job[f"{how}, {kind}"] = await _timed_async(work[kind]) / n
        await db.aclose()

    asyncio.run(asynchronous())
    db.close()
    return per_job


# -- the worker ----------------------------------------------------------------------------


def _worker_main(url: str, kind: str, jobs: int) -> None:
    """In a fresh process: run ``jobs`` jobs with the typed task or the raw handler;
    print this process's CPU seconds and the wall time while serving them as JSON."""

    async def run() -> tuple[float, float]:
        db = taskdb.connect(url)
        app.bind(db)
        if kind == "typed":
            (server,) = app.servers([QUEUE], workers=32, poll_interval=0.01)
        else:
            server = taskdb.JobQueueServer(db, QUEUE, raw_thumb, workers=32, poll_interval=0.01)
        cpu, wall = time.process_time(), time.perf_counter()
        async with server:
            # The server's own count includes the outcome writes, which a handler-side
            # event would miss; a 5 ms poll is well under the runs' spread.
            while server.stats().completed < jobs:  # noqa: ASYNC110
                await asyncio.sleep(0.005)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        await db.aclose()
        return cpu, wall

    cpu, wall = asyncio.run(run())
    print(json.dumps({"cpu": cpu, "wall": wall}))


def _worker_cpu(url: str, kind: str, jobs: int) -> dict[str, float]:
    """Per-job worker CPU and throughput of ``jobs`` pre-submitted jobs of ``kind``."""
    db = taskdb.connect(url)
    if kind == "typed":
        app.bind(db)
        for start in range(0, jobs, 1000):
            thumb.defer_many([_args(i) for i in range(start, min(jobs, start + 1000))])
    else:
        sync = taskdb.SyncJobQueueClient(db, QUEUE)
        for start in range(0, jobs, 1000):
            sync.submit_batch([_args(i) for i in range(start, min(jobs, start + 1000))])
    db.close()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run(
        [sys.executable, __file__, "--worker", kind, "--url", url, "--jobs", str(jobs)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        timeout=600,
    )
    found = json.loads(out.stdout.strip().splitlines()[-1])
    return {"cpu_us": found["cpu"] / jobs * 1e6, "rate": jobs / found["wall"]}


# -- the report ----------------------------------------------------------------------------


def _spread(values: list[float], scale: float = 1.0, fmt: str = "{:.1f}") -> str:
    values = [v * scale for v in values]
    median = fmt.format(statistics.median(values))
    return f"{median} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--pg-url", default=os.environ.get("TASKDB_BENCH_PG_URL", DEFAULT_PG_URL))
    parser.add_argument("--jobs", type=int, default=10_000, help="batched jobs per run (10000)")
    parser.add_argument("--single", type=int, default=1_000, help="one-at-a-time jobs (1000)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each (3)")
    parser.add_argument("--dialects", default="sqlite,postgresql")
    parser.add_argument("--worker", choices=["typed", "raw"], help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker_main(args.url, args.worker, args.jobs)
        return
    verdicts: list[str] = []
    print(
        f"typed tasks vs the raw client, {args.repeat} interleaved runs each (median and "
        f"min-max; raw first on even runs, typed first on odd); {args.jobs:,} jobs batched, "
        f"{args.single:,} one at a time"
    )
    for dialect in args.dialects.split(","):
        enqueue: dict[str, list[float]] = {}
        worker: dict[str, dict[str, list[float]]] = {"typed": {}, "raw": {}}
        for rep in range(args.repeat):
            typed_first = rep % 2 == 1
            with _scratch(dialect, args.pg_url) as url:
                for key, value in _enqueue(url, args.single, args.jobs, typed_first).items():
                    enqueue.setdefault(key, []).append(value)
            for kind in ("typed", "raw") if typed_first else ("raw", "typed"):
                with _scratch(dialect, args.pg_url) as url:
                    for key, value in _worker_cpu(url, kind, args.jobs).items():
                        worker[kind].setdefault(key, []).append(value)
        print(f"\n{dialect}: enqueue, µs per job (lower is better)")
        print(f"{'how':<28} {'raw':>24} {'typed':>24} {'typed/raw':>22}")
        for how in ("sync one at a time", "sync batched", "async one at a time", "async batched"):
            raw, typed = enqueue[f"{how}, raw"], enqueue[f"{how}, typed"]
            ratios = [t / r for t, r in zip(typed, raw, strict=True)]
            print(
                f"{how:<28} {_spread(raw, 1e6):>24} {_spread(typed, 1e6):>24} "
                f"{_spread(ratios, fmt='{:.2f}x'):>22}"
            )
            if "batched" in how:
                ratio = statistics.median(ratios)
                verdict = "PASS" if ratio <= TARGET else "MISS"
                verdicts.append(
                    f"{verdict} {dialect} {how}: typed {ratio:.2f}x raw time per job "
                    f"(validation must cost < {TARGET - 1:.0%})"
                )
        print(f"\n{dialect}: worker, one process x 32 slots")
        print(f"{'handler':<28} {'CPU µs per job':>24} {'jobs/s':>24}")
        for kind in ("raw", "typed"):
            found = worker[kind]
            print(
                f"{kind:<28} {_spread(found['cpu_us']):>24} "
                f"{_spread(found['rate'], fmt='{:,.0f}'):>24}"
            )
        extra = statistics.median(worker["typed"]["cpu_us"]) - statistics.median(
            worker["raw"]["cpu_us"]
        )
        verdicts.append(f"info {dialect} worker: a typed task costs {extra:+.1f} µs CPU per job")
    print()
    for line in verdicts:
        print(line)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
