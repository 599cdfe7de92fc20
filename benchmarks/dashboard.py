"""The dashboard: SSE fan-out cost and page/API latency on 1,000,000 jobs.

Section ``fanout``: the dashboard app served by uvicorn in this process, N SSE
clients (default 100) connected to ``/api/changes``; for a window of
``--seconds`` the change-feed reads (SELECTs on ``taskdb_job_changes``, counted
with a SQLAlchemy event on every engine) are counted while jobs are submitted
and every client receives them. Target: one feed read per poll interval for all
clients (reads/interval ~ 1, not N). Runs on SQLite and PostgreSQL.

Section ``million``: a scratch PostgreSQL database filled with 1,000,000 jobs by
``generate_series`` (5 queues; 95% COMPLETED, 1% FAILED, 2% PENDING, the rest
recently completed), ``VACUUM ANALYZE``d, then each endpoint is requested
``--repeat`` times in process (httpx on the ASGI app), round robin, after one
untimed warm-up each;
every run counts: median and min-max. Target: overview and job list < 100 ms.
The EXPLAIN of the overview's count is printed.

``python benchmarks/dashboard.py [--only fanout,million] [--clients 100]``
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import statistics
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import uvicorn
from sqlalchemy import event, make_url
from sqlalchemy.engine import Engine

import taskdb
from taskdb.web import create_app

DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/test"


def _admin_url(pg_url: str, database: str) -> str:
    url = make_url(pg_url).set(drivername="postgresql", database=database)
    return url.render_as_string(hide_password=False)


@contextlib.contextmanager
def scratch_pg(pg_url: str) -> Iterator[str]:
    name = f"taskdb_bench_dash_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(_admin_url(pg_url, "postgres"), autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')  # type: ignore[arg-type]
    try:
        yield make_url(pg_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(_admin_url(pg_url, "postgres"), autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')  # type: ignore[arg-type]


@contextlib.contextmanager
def feed_reads() -> Iterator[list[float]]:
    reads: list[float] = []

    def seen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "taskdb_job_changes" in statement:
            reads.append(time.monotonic())

    event.listen(Engine, "before_cursor_execute", seen)
    try:
        yield reads
    finally:
        event.remove(Engine, "before_cursor_execute", seen)


@contextlib.asynccontextmanager
async def serving(app: Any) -> AsyncIterator[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    task = asyncio.ensure_future(server.serve())
    while not server.started:
        if task.done():
            task.result()  # it could not start: say why
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


async def _client(http: httpx.AsyncClient, ready: asyncio.Event, counts: list[int]) -> None:
    async with http.stream("GET", "/api/changes") as response:
        ready.set()
        i = len(counts)
        counts.append(0)
        async for line in response.aiter_lines():
            if line.startswith("data:"):
                counts[i] += 1


async def fanout_run(url: str, clients: int, seconds: float, poll: float) -> tuple[float, int, int]:
    """(feed reads per poll interval, changes the slowest client received, jobs
    submitted) of one run."""
    db = taskdb.connect(url)
    try:
        app = create_app(db, poll_interval=poll)
        async with serving(app) as base:
            limits = httpx.Limits(max_connections=clients + 5)
            async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as http:
                counts: list[int] = []
                readies = [asyncio.Event() for _ in range(clients)]
                tasks = [asyncio.ensure_future(_client(http, r, counts)) for r in readies]
                await asyncio.gather(*(r.wait() for r in readies))
                await asyncio.sleep(2 * poll)  # every client attached
                q = taskdb.JobQueueClient(db, "fan")
                with feed_reads() as reads:
                    start = time.monotonic()
                    submitted = 0
                    while time.monotonic() - start < seconds:
                        await q.submit({"n": submitted})
                        submitted += 1
                        await asyncio.sleep(0.05)
                    elapsed = time.monotonic() - start
                await asyncio.sleep(3 * poll)
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
        per_interval = len([r for r in reads if r - start <= elapsed]) / (elapsed / poll)
        return per_interval, min(counts), submitted
    finally:
        await db.aclose()


def fanout(options: argparse.Namespace) -> None:
    print(f"\n## SSE fan-out: {options.clients} clients, poll {options.poll}s, {options.seconds}s")
    with tempfile.TemporaryDirectory() as tmp, scratch_pg(options.pg_url) as pg:
        for name, url in (
            ("sqlite", f"sqlite:///{Path(tmp) / 'bench.sqlite3'}"),
            ("postgresql", pg),
        ):
            taskdb.connect(url).migrate()
            runs = [
                asyncio.run(fanout_run(url, options.clients, options.seconds, options.poll))
                for _ in range(options.runs)
            ]
            rates = [r for r, _, _ in runs]
            print(
                f"{name:<11} feed reads per poll interval: median {statistics.median(rates):.2f} "
                f"(min {min(rates):.2f}, max {max(rates):.2f}) over {len(runs)} runs; "
                f"the slowest client received {[f'{c}/{n}' for _, c, n in runs]} changes"
            )


FILL = """
INSERT INTO taskdb_jobs (queue, status, input, input_digest, attempts, max_retries, priority,
  run_after, progress, created_at, updated_at, completed_at, task, error, error_code)
SELECT 'q' || (g % 5),
  CASE WHEN g % 100 = 0 THEN 'FAILED' WHEN g % 50 = 1 THEN 'PENDING' ELSE 'COMPLETED' END,
  jsonb_build_object('n', g), md5(g::text), 1, 3, 0,
  now() - (1000000 - g) * interval '50 ms', 100,
  now() - (1000000 - g) * interval '50 ms', now(),
  CASE WHEN g % 50 = 1 THEN NULL ELSE now() - (1000000 - g) * interval '50 ms' END,
  'task' || (g % 7),
  CASE WHEN g % 100 = 0 THEN 'boom ' || g END,
  CASE WHEN g % 100 = 0 THEN 'ValueError' END
FROM generate_series(1, 1000000) g
"""

ENDPOINTS = [
    ("overview page  GET /", "/"),
    ("stats          GET /api/stats", "/api/stats"),
    ("chart          GET /api/throughput", "/api/throughput"),
    ("job list page  GET /jobs", "/jobs"),
    ("job list       GET /api/jobs?limit=50", "/api/jobs?limit=50"),
    ("next page      GET /api/jobs?before=500000", "/api/jobs?limit=50&before=500000"),
    ("queue+status   GET /api/jobs?queue=q0&status=FAILED", "/api/jobs?queue=q0&status=FAILED"),
    ("status         GET /api/jobs?status=FAILED", "/api/jobs?status=FAILED"),
    ("job detail     GET /jobs/777777", "/jobs/777777"),
]


async def million_run(url: str, repeat: int) -> list[tuple[str, list[float]]]:
    db = taskdb.connect(url)
    try:
        transport = httpx.ASGITransport(app=create_app(db))
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as http:
            for _, path in ENDPOINTS:  # warm-up, untimed
                assert (await http.get(path)).status_code == 200, path
            times: dict[str, list[float]] = {label: [] for label, _ in ENDPOINTS}
            for _ in range(repeat):  # round robin: no endpoint always runs first
                for label, path in ENDPOINTS:
                    start = time.perf_counter()
                    response = await http.get(path)
                    times[label].append((time.perf_counter() - start) * 1000)
                    assert response.status_code == 200
            results = list(times.items())
            return results
    finally:
        await db.aclose()


def million(options: argparse.Namespace) -> None:
    print("\n## 1,000,000 jobs on PostgreSQL: latency per request (ms), in process")
    with scratch_pg(options.pg_url) as url:
        taskdb.connect(url).migrate()
        plain = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
        with psycopg.connect(plain, autocommit=True) as conn:
            start = time.monotonic()
            conn.execute(FILL)  # type: ignore[arg-type]
            conn.execute("VACUUM ANALYZE taskdb_jobs")
            print(f"filled and vacuumed in {time.monotonic() - start:.1f}s")
            plan = conn.execute(
                "EXPLAIN ANALYZE SELECT queue, status, count(*) FROM taskdb_jobs "
                "GROUP BY queue, status"
            ).fetchall()
            print("overview count plan:\n    " + "\n    ".join(str(r[0]) for r in plan))
        for label, times in asyncio.run(million_run(url, options.repeat)):
            flag = "" if statistics.median(times) < 100 else "   <-- over 100 ms"
            print(
                f"{label:<52} median {statistics.median(times):7.1f}  "
                f"min {min(times):7.1f}  max {max(times):7.1f}  (n={len(times)}){flag}"
            )


SECTIONS = {"fanout": fanout, "million": million}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pg-url", default=DEFAULT_PG_URL)
    parser.add_argument("--only", default=",".join(SECTIONS))
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--poll", type=float, default=0.5)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=20)
    options = parser.parse_args()
    for name in options.only.split(","):
        SECTIONS[name.strip()](options)


if __name__ == "__main__":
    main()
