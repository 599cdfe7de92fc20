"""Queue throughput: taskdb against a raw psycopg loop, pgqueuer and procrastinate.

For each system and worker-process count it

1. creates a scratch database (PostgreSQL ``CREATE DATABASE``, or an SQLite file in
   a temporary directory) and installs that system's schema;
2. enqueues N no-op jobs from this process and times it (enqueue jobs/s);
3. spawns P worker processes, waits until every one has imported its library and
   opened its connections, then tells them to go and polls a COUNT of finished
   jobs from this process until all N are done (processing jobs/s);
4. stops the workers and drops the scratch database (also on Ctrl-C / SIGTERM).

Run ``python benchmarks/queue_throughput.py --help`` for the flags. Worker
processes are started with ``multiprocessing`` "spawn" and import only the library
they benchmark, so their peak RSS is comparable.

To measure one commit while the working tree changes, export it and put it first
on the path (workers inherit it)::

    git archive <rev> taskdb migrations | tar -x -C /tmp/taskdb-<rev>
    PYTHONPATH=/tmp/taskdb-<rev> .venv/bin/python benchmarks/queue_throughput.py
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import hashlib
import json
import logging
import multiprocessing as mp
import os
import platform
import queue as queue_mod
import signal
import sqlite3
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

# Only the standard library is imported at module level: spawned workers import this
# module too, and each must load nothing but the library it benchmarks.

DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
DB_PREFIX = "qbench_"
QUEUE = "bench"
ENTRYPOINT = "noop"
WARMUP_QUEUE = "warmup"
WARMUP_JOBS = 200  # enqueued (untimed) on the same connection first, then deleted
QUIET_BUSY = 15.0  # % CPU busy below which the machine counts as idle before a run
QUIET_BUDGET = 90.0  # at most this many seconds of such waiting per benchmark invocation
READY_TIMEOUT = 90.0
STOP_TIMEOUT = 15.0

SYSTEMS = (
    "taskdb-pg",
    "taskdb-pg-tuned",
    "taskdb-sqlite",
    "taskdb-sqlite-tuned",
    "raw-k10",
    "raw-k50",
    "raw-k200",
    "pgqueuer",
    "pgqueuer-best",
    "procrastinate",
)
PGQUEUER_DEFAULT_BATCH = 10  # PgQueuer.run(batch_size=10)
PGQUEUER_BEST_BATCH = 200  # its fastest here: 4 procs 10: ~3.4k, 50: ~16k, 200: ~21k, 1000: ~21k/s
# The raw loop's fastest claim size here (4 procs, 2026-12-05: 50: ~23k, 100: ~30k, 200: ~40k,
# 400: ~40k, 1000: ~40k jobs/s): the ceiling a hand-written SKIP LOCKED loop reaches.
RAW_BEST_BATCH = 200


@dataclasses.dataclass
class Options:
    pg_url: str
    jobs: int
    procrastinate_jobs: int
    untuned_jobs: int
    procs: list[int]
    only: list[str]
    repeat: int
    submit_batch: int
    taskdb_workers: int
    taskdb_batch: int
    poll_interval: float
    concurrency: int
    raw_conns: int
    pgqueuer_best_batch: int
    run_timeout: float
    wait_quiet: float
    json_path: Path | None


@dataclasses.dataclass
class RunResult:
    system: str
    dialect: str
    procs: int
    jobs: int
    enqueue_rate: float | None = None
    process_rate: float | None = None
    enqueue_seconds: float | None = None
    process_seconds: float | None = None
    peak_rss: int | None = None
    worker_cpu: float | None = None
    db_cpu: float | None = None
    other_cpu: float | None = None  # % of the machine used by unrelated processes
    db_errors: int = 0
    locked_errors: int = 0
    warnings: int = 0
    xacts_per_job: float | None = None  # PostgreSQL transactions per job while processing
    check: str = ""
    per_worker: list[int] = dataclasses.field(default_factory=list)
    error: str | None = None
    # Every repeat's processing rate; None for a run that failed.
    rates: list[float | None] = dataclasses.field(default_factory=list)
    noisy_runs: list[int] = dataclasses.field(default_factory=list)  # indexes into rates
    total_us: list[float] = dataclasses.field(default_factory=list)  # worker + PG CPU, each run


# ---------------------------------------------------------------------------------------
# Small helpers shared by the parent and the workers
# ---------------------------------------------------------------------------------------


def _payload(i: int) -> dict[str, int]:
    return {"i": i}


def _with_db(url: str, dbname: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + dbname, parts.query, parts.fragment))


def _high_water_rss() -> int:
    """This process's peak RSS in bytes (VmHWM: unlike ru_maxrss it does not carry
    over the RSS of the parent that forked before exec)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


class _Aborted(Exception):
    """The benchmark was stopped before this worker was told to go."""


def _wait_event(event: Any, parent: int, abort: Any = None) -> None:
    """Block until ``event`` is set. Raise :class:`_Aborted` if ``abort`` is set first;
    exit at once if the benchmark process died meanwhile."""
    while not event.wait(0.1):
        if abort is not None and abort.is_set():
            raise _Aborted
        if os.getppid() != parent:
            os._exit(3)


class _ErrorCounter(logging.Handler):
    """Counts warnings (and 'database is locked' ones) logged by the libraries."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.warnings = 0
        self.locked = 0
        self.samples: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        self.warnings += 1
        if "database is locked" in message.lower():
            self.locked += 1
        if len(self.samples) < 3:
            sample = f"{record.name}: {message}"[:300]
            if record.exc_info:
                trace = "".join(traceback.format_exception(*record.exc_info)).rstrip()
                sample += "\n" + "\n".join(trace.splitlines()[-12:])
            self.samples.append(sample)


# ---------------------------------------------------------------------------------------
# Workers (run in spawned processes)
# ---------------------------------------------------------------------------------------


class _Control:
    def __init__(self, events: Any, start: Any, stop: Any, parent: int) -> None:
        self.events, self.start, self.stop, self.parent = events, start, stop, parent

    def ready(self) -> None:
        self.events.put(("ready", os.getpid(), None))

    def wait_start(self) -> None:
        _wait_event(self.start, self.parent, abort=self.stop)

    def wait_stop(self) -> None:
        _wait_event(self.stop, self.parent)

    async def await_start(self) -> None:
        await asyncio.to_thread(self.wait_start)

    async def await_stop(self) -> None:
        await asyncio.to_thread(self.wait_stop)


def _worker_taskdb(url: str, opts: dict[str, Any], ctl: _Control) -> dict[str, Any]:
    from sqlalchemy import Engine, event, text

    import taskdb
    from taskdb.cli.serve import settle_heap
    from taskdb.queue.server import JobQueueServer

    counts = {"db_errors": 0, "locked": 0}
    samples: list[str] = []

    @event.listens_for(Engine, "handle_error")
    def _on_error(context: Any) -> None:
        exc = context.original_exception
        if not isinstance(exc, Exception):  # CancelledError when the server stops
            return
        message = f"{type(exc).__name__}: {exc}"
        counts["db_errors"] += 1
        if "database is locked" in message.lower():
            counts["locked"] += 1
        if len(samples) < 3:
            samples.append(message[:300])

    async def noop(_input: Any, _ctx: Any) -> None:
        return None

    async def main() -> dict[str, Any]:
        db = taskdb.connect(url)

        async def ping() -> None:
            async with db.transaction(write=False) as conn:
                await conn.execute(text("SELECT 1"))
                await asyncio.sleep(0.05)  # hold it so the pings open distinct connections

        await asyncio.gather(*(ping() for _ in range(3)))
        settle_heap()  # as `taskdb worker` does once it has loaded the app
        server = JobQueueServer(db, QUEUE, noop, **opts)
        ctl.ready()
        await ctl.await_start()
        await server.start()
        await ctl.await_stop()
        await server.stop(timeout=5.0)
        stats = server.stats()
        await db.aclose()
        return {
            "completed": stats.completed,
            "samples": samples,
            "module": taskdb.__file__,
            **counts,
        }

    return asyncio.run(main())


_RAW_CLAIM = """
UPDATE taskdb_jobs
   SET status = 'PROCESSING', worker_id = %(worker)s, attempts = attempts + 1,
       lease_expires_at = %(lease)s, updated_at = %(now)s
 WHERE id IN (
        SELECT id FROM taskdb_jobs
         WHERE queue = %(queue)s AND status = 'PENDING' AND run_after <= %(now)s
           AND (deadline IS NULL OR deadline > %(now)s)
         ORDER BY priority DESC, run_after, id
         LIMIT %(limit)s
           FOR UPDATE SKIP LOCKED)
RETURNING id, attempts, input
"""

_RAW_DONE = """
UPDATE taskdb_jobs
   SET status = 'COMPLETED', output = NULL, completed_at = %(now)s, worker_id = NULL,
       lease_expires_at = NULL, updated_at = %(now)s
 WHERE id = ANY(%(ids)s) AND worker_id = %(worker)s AND status = 'PROCESSING'
"""


def _worker_raw(url: str, opts: dict[str, Any], ctl: _Control) -> dict[str, Any]:
    """The loop a careful engineer writes by hand: ``conns`` connections per process,
    each in a thread of its own (psycopg releases the GIL on I/O) running prepared
    claim / complete statements with binary-format results."""
    import threading

    import psycopg

    done = [0] * opts["conns"]
    errors: list[str] = []

    def loop(slot: int, conn: Any) -> None:
        worker = f"raw:{os.getpid()}:{slot}:{uuid.uuid4().hex[:8]}"
        try:
            with conn.cursor(binary=True) as cur:
                while not ctl.stop.is_set():
                    now = datetime.now(UTC)
                    params = {
                        "worker": worker,
                        "queue": QUEUE,
                        "now": now,
                        "lease": now + timedelta(seconds=30),
                        "limit": opts["batch"],
                    }
                    rows = cur.execute(_RAW_CLAIM, params, prepare=True).fetchall()
                    if not rows:
                        if os.getppid() != ctl.parent:
                            os._exit(3)
                        time.sleep(opts["poll_interval"])
                        continue
                    for _id, _attempts, _input in rows:
                        pass  # the no-op handler
                    ids = [r[0] for r in rows]
                    done_params = {"now": datetime.now(UTC), "ids": ids, "worker": worker}
                    cur.execute(_RAW_DONE, done_params, prepare=True)
                    done[slot] += cur.rowcount
        except Exception:
            errors.append(traceback.format_exc())

    conns = [psycopg.connect(url, autocommit=True) for _ in range(opts["conns"])]
    try:
        for conn in conns:
            conn.execute("SELECT 1")
        ctl.ready()
        ctl.wait_start()
        threads = [
            threading.Thread(target=loop, args=(i, c), daemon=True) for i, c in enumerate(conns)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        for conn in conns:
            conn.close()
    return {"completed": sum(done), "db_errors": len(errors), "locked": 0, "samples": errors[:3]}


def _worker_pgqueuer(url: str, opts: dict[str, Any], ctl: _Control) -> dict[str, Any]:
    import asyncpg
    from pgqueuer import PgQueuer
    from pgqueuer.db import AsyncpgDriver

    completed = 0

    async def main() -> dict[str, Any]:
        conn = await asyncpg.connect(url)
        pgq = PgQueuer(AsyncpgDriver(conn))

        @pgq.entrypoint(ENTRYPOINT)
        async def noop(_job: Any) -> None:
            nonlocal completed
            completed += 1

        await conn.fetchval("SELECT 1")
        ctl.ready()
        await ctl.await_start()
        task = asyncio.ensure_future(pgq.run(batch_size=opts["batch"]))
        await ctl.await_stop()
        pgq.shutdown.set()
        try:
            await asyncio.wait_for(task, STOP_TIMEOUT)
        finally:
            await conn.close()
        return {"completed": completed, "db_errors": 0, "locked": 0, "samples": []}

    return asyncio.run(main())


def _worker_procrastinate(url: str, opts: dict[str, Any], ctl: _Control) -> dict[str, Any]:
    import procrastinate

    app = procrastinate.App(
        connector=procrastinate.PsycopgConnector(conninfo=url, min_size=10, max_size=10)
    )
    completed = 0

    @app.task(name=ENTRYPOINT, queue=QUEUE)
    async def noop(i: int) -> None:
        nonlocal completed
        completed += 1

    async def main() -> dict[str, Any]:
        async with app.open_async():
            await app.connector.execute_query_one_async("SELECT 1 AS one")
            ctl.ready()
            await ctl.await_start()
            task = asyncio.ensure_future(
                app.run_worker_async(
                    queues=[QUEUE],
                    concurrency=opts["concurrency"],
                    fetch_job_polling_interval=opts["poll_interval"],
                    install_signal_handlers=False,
                    wait=True,
                )
            )
            await ctl.await_stop()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(task, STOP_TIMEOUT)
        return {"completed": completed, "db_errors": 0, "locked": 0, "samples": []}

    return asyncio.run(main())


WORKERS: dict[str, Callable[[str, dict[str, Any], _Control], dict[str, Any]]] = {
    "taskdb": _worker_taskdb,
    "raw": _worker_raw,
    "pgqueuer": _worker_pgqueuer,
    "procrastinate": _worker_procrastinate,
}


def _worker_entry(
    kind: str, url: str, opts: dict[str, Any], events: Any, start: Any, stop: Any, parent: int
) -> None:
    # Ctrl-C reaches the whole process group: the parent stops the workers itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    counter = _ErrorCounter()
    logging.basicConfig(level=logging.WARNING, handlers=[counter])
    ctl = _Control(events, start, stop, parent)
    try:
        result = WORKERS[kind](url, opts, ctl)
    except _Aborted:
        return
    except BaseException:
        events.put(("error", os.getpid(), traceback.format_exc()))
        raise
    result["warnings"] = counter.warnings
    result["maxrss"] = _high_water_rss()
    result["locked"] = result.get("locked", 0) + counter.locked
    result["samples"] = result.get("samples", []) + counter.samples
    events.put(("result", os.getpid(), result))


# ---------------------------------------------------------------------------------------
# Parent side: scratch databases, enqueue, the timed processing run
# ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def _no_interrupt() -> Iterator[None]:
    """Run cleanup with SIGINT held back (a second Ctrl-C must not skip the DROP)."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _admin(pg_url: str) -> Any:
    import psycopg

    return psycopg.connect(pg_url, autocommit=True)


def _drop_database(pg_url: str, name: str) -> None:
    with _admin(pg_url) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _drop_stale_databases(pg_url: str) -> list[str]:
    """Drop scratch databases left by a benchmark process that no longer runs."""
    import psutil

    dropped = []
    with _admin(pg_url) as conn:
        names = [
            r[0]
            for r in conn.execute(
                "SELECT datname FROM pg_database WHERE datname LIKE %s", (DB_PREFIX + "%",)
            )
        ]
    for name in names:
        try:
            pid = int(name[len(DB_PREFIX) :].split("_", 1)[0])
        except ValueError:
            continue
        if pid != os.getpid() and not psutil.pid_exists(pid):
            _drop_database(pg_url, name)
            dropped.append(name)
    return dropped


@contextlib.contextmanager
def _scratch_pg(pg_url: str, tag: str) -> Iterator[str]:
    name = f"{DB_PREFIX}{os.getpid()}_{tag.replace('-', '_')}_{uuid.uuid4().hex[:6]}"
    with _admin(pg_url) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield _with_db(pg_url, name)
    finally:
        with _no_interrupt():
            _drop_database(pg_url, name)


@contextlib.contextmanager
def _scratch_sqlite() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="qbench_") as tmp:
        yield f"sqlite:///{tmp}/bench.sqlite3"


def _sqlite_path(url: str) -> str:
    return url.removeprefix("sqlite:///")


class System:
    """One benchmarked system: schema, enqueue, the done-count and its worker kind."""

    name: str
    dialect = "pg"
    worker_kind: str

    def __init__(self, opts: Options) -> None:
        self.opts = opts

    def jobs(self) -> int:
        return self.opts.jobs

    def scratch(self) -> contextlib.AbstractContextManager[str]:
        return _scratch_pg(self.opts.pg_url, self.name)

    def install(self, url: str) -> None:
        raise NotImplementedError

    def enqueue(self, url: str, n: int) -> float:
        """Enqueue n jobs; returns the seconds the enqueue itself took."""
        raise NotImplementedError

    def done_sql(self) -> str:
        raise NotImplementedError

    def check_sql(self) -> str | None:
        return None

    def worker_opts(self) -> dict[str, Any]:
        return {}

    def counter(self, url: str) -> Any:
        import psycopg

        return psycopg.connect(url, autocommit=True)


class TaskdbPg(System):
    name = "taskdb-pg"
    worker_kind = "taskdb"

    def install(self, url: str) -> None:
        import taskdb

        db = taskdb.connect(url)
        db.migrate()
        db.close()

    def enqueue(self, url: str, n: int) -> float:
        from sqlalchemy import text

        import taskdb
        from taskdb.queue.client import JobQueueClient

        inputs = [_payload(i) for i in range(n)]
        step = self.opts.submit_batch or n

        async def main() -> float:
            db = taskdb.connect(url)
            try:
                warm = JobQueueClient(db, WARMUP_QUEUE)
                await warm.submit_batch([_payload(i) for i in range(WARMUP_JOBS)])
                async with db.transaction() as conn:
                    for table in ("taskdb_job_changes", "taskdb_jobs"):
                        await conn.execute(
                            text(f"DELETE FROM {table} WHERE queue = :q"), {"q": WARMUP_QUEUE}
                        )
                client = JobQueueClient(db, QUEUE)
                started = time.perf_counter()
                for lo in range(0, n, step):
                    await client.submit_batch(inputs[lo : lo + step])
                return time.perf_counter() - started
            finally:
                await db.aclose()

        return asyncio.run(main())

    def done_sql(self) -> str:
        return "SELECT count(*) FROM taskdb_jobs WHERE status = 'COMPLETED'"

    def check_sql(self) -> str:
        return (
            "SELECT count(*) FILTER (WHERE status <> 'COMPLETED'), "
            "coalesce(max(attempts), 0) FROM taskdb_jobs"
        )

    def jobs(self) -> int:
        return min(self.opts.jobs, self.opts.untuned_jobs)

    def worker_opts(self) -> dict[str, Any]:
        from taskdb import settings  # what `taskdb worker mod:app` starts

        return {"workers": settings.DEFAULT_WORKER_SLOTS}


class TaskdbPgTuned(TaskdbPg):
    name = "taskdb-pg-tuned"

    def jobs(self) -> int:
        return self.opts.jobs

    def worker_opts(self) -> dict[str, Any]:
        return {
            "workers": self.opts.taskdb_workers,
            "batch_size": self.opts.taskdb_batch,
            "poll_interval": self.opts.poll_interval,
        }


class TaskdbSqlite(TaskdbPg):
    name = "taskdb-sqlite"
    dialect = "sqlite"

    def scratch(self) -> contextlib.AbstractContextManager[str]:
        return _scratch_sqlite()

    def counter(self, url: str) -> Any:
        conn = sqlite3.connect(_sqlite_path(url), isolation_level=None, timeout=30)
        return conn


class TaskdbSqliteTuned(TaskdbSqlite):
    name = "taskdb-sqlite-tuned"

    def jobs(self) -> int:
        return self.opts.jobs

    def worker_opts(self) -> dict[str, Any]:
        return TaskdbPgTuned.worker_opts(self)


class RawPg(System):
    name = "raw-k10"
    worker_kind = "raw"
    batch = 10

    def install(self, url: str) -> None:
        TaskdbPg.install(self, url)  # the same table, indexes and all

    def enqueue(self, url: str, n: int) -> float:
        import psycopg

        now = datetime.now(UTC)
        texts = [json.dumps(_payload(i), separators=(",", ":")) for i in range(n)]
        columns = (
            "queue, status, input, input_digest, max_retries, priority, run_after, "
            "attempts, progress, created_at, updated_at"
        )
        sql = f"COPY taskdb_jobs ({columns}) FROM STDIN"

        def copy_rows(conn: Any, queue: str, docs: list[str]) -> None:
            with conn.cursor() as cur, cur.copy(sql) as copy:
                for doc in docs:
                    digest = hashlib.sha256(doc.encode()).hexdigest()
                    copy.write_row((queue, "PENDING", doc, digest, 3, 0, now, 0, 0.0, now, now))
            conn.commit()

        with psycopg.connect(url) as conn:
            copy_rows(conn, WARMUP_QUEUE, texts[:WARMUP_JOBS])
            conn.execute("DELETE FROM taskdb_jobs WHERE queue = %s", (WARMUP_QUEUE,))
            conn.commit()
            started = time.perf_counter()
            copy_rows(conn, QUEUE, texts)
            return time.perf_counter() - started

    def done_sql(self) -> str:
        return TaskdbPg.done_sql(self)

    def check_sql(self) -> str:
        return TaskdbPg.check_sql(self)

    def worker_opts(self) -> dict[str, Any]:
        return {
            "batch": self.batch,
            "conns": self.opts.raw_conns,
            "poll_interval": self.opts.poll_interval,
        }


class RawPg50(RawPg):
    name = "raw-k50"
    batch = 50


class RawPgBest(RawPg):
    name = "raw-k200"
    batch = RAW_BEST_BATCH


class PgQueuerSystem(System):
    name = "pgqueuer"
    worker_kind = "pgqueuer"

    def install(self, url: str) -> None:
        import asyncpg
        from pgqueuer.db import AsyncpgDriver
        from pgqueuer.queries import Queries

        async def main() -> None:
            conn = await asyncpg.connect(url)
            try:
                await Queries(AsyncpgDriver(conn)).install()
            finally:
                await conn.close()

        asyncio.run(main())

    def enqueue(self, url: str, n: int) -> float:
        import asyncpg
        from pgqueuer.db import AsyncpgDriver
        from pgqueuer.queries import Queries

        payloads: list[bytes | None] = [
            json.dumps(_payload(i), separators=(",", ":")).encode() for i in range(n)
        ]

        async def main() -> float:
            conn = await asyncpg.connect(url)
            try:
                queries = Queries(AsyncpgDriver(conn))
                warm = payloads[:WARMUP_JOBS]
                await queries.enqueue([WARMUP_QUEUE] * len(warm), warm, [0] * len(warm))
                await conn.execute("DELETE FROM pgqueuer WHERE entrypoint = $1", WARMUP_QUEUE)
                started = time.perf_counter()
                await queries.enqueue([ENTRYPOINT] * n, payloads, [0] * n)
                return time.perf_counter() - started
            finally:
                await conn.close()

        return asyncio.run(main())

    def done_sql(self) -> str:
        return "SELECT count(*) FROM pgqueuer_log WHERE status = 'successful'"

    def check_sql(self) -> str:
        return "SELECT (SELECT count(*) FROM pgqueuer), 1"

    def worker_opts(self) -> dict[str, Any]:
        return {"batch": PGQUEUER_DEFAULT_BATCH}


class PgQueuerBest(PgQueuerSystem):
    name = "pgqueuer-best"

    def worker_opts(self) -> dict[str, Any]:
        return {"batch": self.opts.pgqueuer_best_batch}


class ProcrastinateSystem(System):
    name = "procrastinate"
    worker_kind = "procrastinate"

    def jobs(self) -> int:
        return min(self.opts.jobs, self.opts.procrastinate_jobs)

    def _app(self, url: str) -> Any:
        import procrastinate

        app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=url))

        @app.task(name=ENTRYPOINT, queue=QUEUE)
        async def noop(i: int) -> None:
            return None

        return app

    def install(self, url: str) -> None:
        app = self._app(url)

        async def main() -> None:
            async with app.open_async():
                await app.schema_manager.apply_schema_async()

        asyncio.run(main())

    def enqueue(self, url: str, n: int) -> float:
        app = self._app(url)
        kwargs = [_payload(i) for i in range(n)]
        task = app.tasks[ENTRYPOINT]

        async def main() -> float:
            async with app.open_async():
                warm = task.configure(queue=WARMUP_QUEUE)
                await warm.batch_defer_async(*kwargs[:WARMUP_JOBS])
                await app.connector.execute_query_async(
                    f"DELETE FROM procrastinate_jobs WHERE queue_name = '{WARMUP_QUEUE}'"
                )
                started = time.perf_counter()
                await task.batch_defer_async(*kwargs)
                return time.perf_counter() - started

        return asyncio.run(main())

    def done_sql(self) -> str:
        return "SELECT count(*) FROM procrastinate_jobs WHERE status = 'succeeded'"

    def check_sql(self) -> str:
        return (
            "SELECT count(*) FILTER (WHERE status <> 'succeeded'), "
            "coalesce(max(attempts), 0) FROM procrastinate_jobs"
        )

    def worker_opts(self) -> dict[str, Any]:
        return {"concurrency": self.opts.concurrency, "poll_interval": self.opts.poll_interval}


SYSTEM_CLASSES: dict[str, type[System]] = {
    "taskdb-pg": TaskdbPg,
    "taskdb-pg-tuned": TaskdbPgTuned,
    "taskdb-sqlite": TaskdbSqlite,
    "taskdb-sqlite-tuned": TaskdbSqliteTuned,
    "raw-k10": RawPg,
    "raw-k50": RawPg50,
    "raw-k200": RawPgBest,
    "pgqueuer": PgQueuerSystem,
    "pgqueuer-best": PgQueuerBest,
    "procrastinate": ProcrastinateSystem,
}


def _backend_cpu(counter: Any, known: dict[int, float] | None = None) -> dict[int, float]:
    """CPU seconds so far of the server processes (backends) serving the scratch
    database, other than ``counter``'s own, plus those in ``known`` still alive.
    The server is shared: only the benchmark's own backends are counted (its
    background writers are not)."""
    import psutil

    rows = counter.execute(
        "SELECT pid FROM pg_stat_activity "
        "WHERE datname = current_database() AND pid <> pg_backend_pid()"
    ).fetchall()
    found = {}
    for pid in {int(r[0]) for r in rows} | set(known or ()):
        with contextlib.suppress(psutil.Error):
            t = psutil.Process(pid).cpu_times()
            found[pid] = t.user + t.system
    return found


def _cpu(procs: list[Any]) -> float:
    import psutil

    total = 0.0
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            t = proc.cpu_times()
            total += t.user + t.system
    return total


def _machine_busy() -> float:
    """CPU seconds the whole machine spent busy (or stolen by the hypervisor)."""
    import psutil

    t = psutil.cpu_times()
    return sum(getattr(t, f, 0.0) for f in ("user", "nice", "system", "steal"))


def _db_xacts(conn: Any) -> int:
    """Committed + rolled back transactions of the connection's database so far."""
    return int(
        conn.execute(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database "
            "WHERE datname = current_database()"
        ).fetchone()[0]
    )


_quiet_budget = [QUIET_BUDGET]  # seconds of waiting left for this benchmark process


def _wait_for_quiet(max_wait: float) -> float:
    """Wait (up to ``max_wait`` s, and within the process-wide budget) until the machine
    is nearly idle; returns the seconds waited."""
    import psutil

    started = time.monotonic()
    limit = min(max_wait, _quiet_budget[0])
    while time.monotonic() - started < limit:
        if psutil.cpu_percent(interval=0.5) < QUIET_BUSY:
            break
    waited = time.monotonic() - started
    _quiet_budget[0] = max(0.0, _quiet_budget[0] - waited)
    return waited


def _run_one(system: System, procs: int, log: Callable[[str], None]) -> RunResult:
    import psutil

    n = system.jobs()
    result = RunResult(system.name, system.dialect, procs, n)
    ctx = mp.get_context("spawn")
    with system.scratch() as url:
        system.install(url)
        _wait_for_quiet(system.opts.wait_quiet)
        seconds = system.enqueue(url, n)
        result.enqueue_seconds = seconds
        result.enqueue_rate = n / seconds

        events = ctx.Queue()
        start, stop = ctx.Event(), ctx.Event()
        workers = [
            ctx.Process(
                target=_worker_entry,
                args=(
                    system.worker_kind,
                    url,
                    system.worker_opts(),
                    events,
                    start,
                    stop,
                    os.getpid(),
                ),
                daemon=True,
                name=f"{system.name}-{i}",
            )
            for i in range(procs)
        ]
        counter = None
        try:
            for w in workers:
                w.start()
            ready: set[int] = set()
            deadline = time.monotonic() + READY_TIMEOUT
            while len(ready) < procs:
                try:
                    kind, pid, payload = events.get(timeout=0.5)
                except queue_mod.Empty:
                    if time.monotonic() > deadline:
                        raise TimeoutError("workers not ready in time") from None
                    dead = [w for w in workers if not w.is_alive()]
                    if dead:
                        raise RuntimeError(f"worker {dead[0].name} exited before ready") from None
                    continue
                if kind == "error":
                    raise RuntimeError(f"worker {pid} failed to start:\n{payload}")
                ready.add(pid)
            handles = [psutil.Process(w.pid) for w in workers]
            counter = system.counter(url)
            done_sql = system.done_sql()
            peak = max(h.memory_info().rss for h in handles)
            is_pg = system.dialect == "pg"
            me = psutil.Process()
            db0 = _backend_cpu(counter) if is_pg else {}
            cpu0, me0, busy0 = _cpu(handles), _cpu([me]), _machine_busy()
            xacts0 = _db_xacts(counter) if is_pg else 0
            polls = 0

            started = time.perf_counter()
            start.set()
            give_up = started + system.opts.run_timeout
            done = 0
            while True:
                done = int(counter.execute(done_sql).fetchone()[0])
                polls += 1
                now = time.perf_counter()
                for h in handles:
                    with contextlib.suppress(psutil.Error):
                        peak = max(peak, h.memory_info().rss)
                if done >= n:
                    break
                if now > give_up:
                    result.error = f"timeout: {done}/{n} done after {now - started:.0f}s"
                    break
                if not all(w.is_alive() for w in workers):
                    result.error = f"a worker died: {done}/{n} done"
                    break
                # Poll fast near the end so the finish time is precise.
                time.sleep(0.01 if n - done < max(50, n // 20) else 0.05)
            elapsed = time.perf_counter() - started
            result.worker_cpu = _cpu(handles) - cpu0
            db1 = _backend_cpu(counter, db0) if is_pg else {}
            db_cpu = sum(cpu - db0.get(pid, 0.0) for pid, cpu in db1.items())
            result.db_cpu = db_cpu if is_pg else None
            known = result.worker_cpu + db_cpu + (_cpu([me]) - me0)
            other = max(0.0, _machine_busy() - busy0 - known)
            result.other_cpu = 100.0 * other / (elapsed * (os.cpu_count() or 1))
            result.process_seconds = elapsed
            result.process_rate = done / elapsed
            result.peak_rss = peak

            stop.set()
            outcomes: dict[int, dict[str, Any]] = {}
            deadline = time.monotonic() + STOP_TIMEOUT
            while len(outcomes) < procs and time.monotonic() < deadline:
                try:
                    kind, pid, payload = events.get(timeout=0.5)
                except queue_mod.Empty:
                    if not any(w.is_alive() for w in workers):
                        break
                    continue
                if kind == "result":
                    outcomes[pid] = payload
                elif kind == "error":
                    log(f"  worker {pid} failed while stopping:\n{payload}")
                    outcomes[pid] = {"completed": 0}
            result.per_worker = [int(o.get("completed", 0)) for o in outcomes.values()]
            result.db_errors = sum(int(o.get("db_errors", 0)) for o in outcomes.values())
            result.locked_errors = sum(int(o.get("locked", 0)) for o in outcomes.values())
            result.warnings = sum(int(o.get("warnings", 0)) for o in outcomes.values())
            # The kernel's high-water mark, reported by each worker as it exits, catches
            # peaks between two psutil samples.
            reported = [int(o.get("maxrss", 0)) for o in outcomes.values()]
            result.peak_rss = max([peak, *reported])
            samples = [s for o in outcomes.values() for s in o.get("samples", [])]
            for sample in samples[:3]:
                log(f"  [{system.name}] worker warning/error: {sample}")
            if is_pg:
                # Workers' backends flush their statistics as they exit: wait for them.
                for w in workers:
                    w.join(timeout=max(0.1, deadline - time.monotonic()))
                for _ in range(50):
                    others = counter.execute(
                        "SELECT count(*) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                    ).fetchone()[0]
                    if not others:
                        break
                    time.sleep(0.05)
                # Less the benchmark's own COUNT polls (one autocommit transaction each).
                xacts = _db_xacts(counter) - xacts0 - polls - 1
                result.xacts_per_job = max(0, xacts) / n
            check_sql = system.check_sql()
            if check_sql is not None:
                left, max_attempts = counter.execute(check_sql).fetchone()
                result.check = "ok" if (left == 0 and max_attempts <= 1) else ""
                if left:
                    result.check = f"{left} not done"
                elif max_attempts > 1:
                    result.check = f"max attempts {max_attempts}"
            if len(outcomes) < procs:
                result.check += f" ({procs - len(outcomes)} worker(s) gave no report)"
            if system.worker_kind == "taskdb":
                import taskdb

                modules = {o.get("module") for o in outcomes.values()} - {taskdb.__file__}
                if modules:
                    result.check += f" (workers imported another taskdb: {sorted(modules)})"
        finally:
            with _no_interrupt():
                stop.set()
                give_up = time.monotonic() + STOP_TIMEOUT
                for w in workers:
                    if w.pid is not None:
                        w.join(timeout=max(0.1, give_up - time.monotonic()))
                for w in workers:
                    if w.is_alive():
                        w.terminate()
                        w.join(timeout=5)
                    if w.is_alive():
                        w.kill()
                        w.join(timeout=5)
                if counter is not None:
                    counter.close()
                events.close()
    return result


# ---------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------


def _machine_facts(opts: Options) -> list[tuple[str, str]]:
    import psutil
    import psycopg

    model = platform.processor() or "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    facts = [
        (
            "CPU",
            f"{os.cpu_count()} logical cores ({psutil.cpu_count(logical=False)} physical), {model}",
        ),
        ("Memory", f"{psutil.virtual_memory().total / 2**30:.1f} GiB"),
        ("OS / Python", f"{platform.platform()} / Python {platform.python_version()}"),
    ]
    names = ("fsync", "synchronous_commit", "shared_buffers", "max_connections", "work_mem")
    with psycopg.connect(opts.pg_url, autocommit=True) as conn:
        version = conn.execute("SHOW server_version").fetchone()[0]
        # SHOW gives each value in its natural unit ('128MB', 'on'); pg_settings.setting
        # is in the unit's multiples (shared_buffers: a count of 8kB pages).
        settings = {name: (conn.execute(f"SHOW {name}").fetchone() or ("?",))[0] for name in names}
    facts.append(
        (
            "PostgreSQL",
            f"{version} at {urlsplit(opts.pg_url).netloc} ("
            + ", ".join(f"{k}={v}" for k, v in sorted(settings.items()))
            + ")",
        )
    )
    facts.append(("SQLite", sqlite3.sqlite_version))
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    busy = psutil.cpu_percent(interval=1.0)
    facts.append(("Load before start", f"load average {load}; CPU busy {busy:.0f}% over 1 s"))
    versions = []
    for dist in (
        "taskdb",
        "SQLAlchemy",
        "psycopg",
        "aiosqlite",
        "pgqueuer",
        "asyncpg",
        "procrastinate",
    ):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions.append(f"{dist} {metadata.version(dist)}")
    facts.append(("Packages", ", ".join(versions)))
    return facts


def _taskdb_source() -> tuple[str, str]:
    """(description, content hash) of the taskdb package that workers will import."""
    import importlib.util
    import subprocess

    spec = importlib.util.find_spec("taskdb")
    if spec is None or not spec.submodule_search_locations:
        return "taskdb not found", ""
    package = Path(next(iter(spec.submodule_search_locations)))
    files = sorted(package.rglob("*.py")) + sorted((package.parent / "migrations").rglob("*.py"))
    digest = hashlib.sha256()
    for path in files:
        with contextlib.suppress(OSError):
            digest.update(str(path.relative_to(package.parent)).encode() + path.read_bytes())
    content = digest.hexdigest()[:12]
    git = "not a git checkout"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        head = subprocess.run(
            ["git", "-C", str(package), "log", "-1", "--format=%h %s"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        if head.returncode == 0:
            dirty = subprocess.run(
                ["git", "-C", str(package), "status", "--porcelain", "--", "."],
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout.strip()
            git = f"git {head.stdout.strip()[:70]}" + (
                " + uncommitted changes in taskdb/" if dirty else ", clean"
            )
    return f"{package} ({git}; sources sha256 {content})", content


def _fmt_rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _fmt_ratio(value: float | None, ref: float | None) -> str:
    if value is None or not ref:
        return "-"
    return f"{value / ref:.2f}x"


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


NOISY = 10.0  # % of the machine's CPU used by other processes that makes a run noisy


def _noisy(run: RunResult) -> bool:
    return run.other_cpu is not None and run.other_cpu >= NOISY


def _summarize(runs: list[RunResult]) -> RunResult:
    """One row per (system, procs): the median processing and enqueue rates of every
    run that finished (noisy ones too: every run counts), other columns from the run
    nearest that median, and every run's processing rate in ``rates`` (``None`` for a
    run that failed; runs that other processes disturbed listed in ``noisy_runs``, for
    the reader)."""
    good = [r for r in runs if not r.error and r.process_rate is not None]
    every = [None if r.error or r.process_rate is None else r.process_rate for r in runs]
    if not good:
        row = dataclasses.replace(runs[-1])
        row.rates = every
        row.noisy_runs = [i for i, r in enumerate(runs) if _noisy(r)]
        return row
    middle = _median([r.process_rate or 0.0 for r in good])
    # The other columns come from the run closest to the median.
    row = dataclasses.replace(min(good, key=lambda r: abs((r.process_rate or 0.0) - middle)))
    row.process_rate = middle
    # CPU columns: the median per run (every run has the same number of jobs)
    workers = [r.worker_cpu for r in good if r.worker_cpu is not None]
    row.worker_cpu = _median(workers) if workers else None
    dbs = [r.db_cpu for r in good if r.db_cpu is not None]
    row.db_cpu = _median(dbs) if dbs else None
    row.total_us = [
        ((r.worker_cpu or 0.0) + (r.db_cpu or 0.0)) / r.jobs * 1e6
        for r in good
        if r.worker_cpu is not None
    ]
    enqueues = [r.enqueue_rate for r in good if r.enqueue_rate is not None]
    row.enqueue_rate = _median(enqueues) if enqueues else None
    row.rates = every
    row.noisy_runs = [i for i, r in enumerate(runs) if _noisy(r)]
    row.db_errors = sum(r.db_errors for r in runs)
    row.locked_errors = sum(r.locked_errors for r in runs)
    row.warnings = sum(r.warnings for r in runs)
    failed = [r.error for r in runs if r.error]
    if failed:
        row.check = f"{row.check}; {len(failed)} run(s) failed: {failed[0]}"
    return row


def _report(console: Any, rows: list[RunResult], opts: Options) -> list[str]:
    from rich.table import Table

    def rate(system: str, procs: int) -> float | None:
        for r in rows:
            if r.system == system and r.procs == procs and _measured(r):
                return r.process_rate
        return None

    repeat = "; median of all runs" if opts.repeat > 1 else ""
    table = Table(
        title=f"Queue throughput, no-op jobs ({opts.jobs:,} per run unless noted{repeat})",
        caption=(
            "x raw50 / x pgq: processing rate over the raw claim-50 loop / pgqueuer at its "
            "default batch with the same process count.  process jobs/s: the median of every "
            "run that finished ('failed' in the per-run list: a run that failed, left out of "
            "the median).  peak RSS: the largest worker process (psutil samples and its VmHWM "
            "at exit).  CPU: all worker processes / the PostgreSQL backends serving the "
            "scratch database, per job, over the processing window (medians of the runs); "
            "total: their sum, each run.  PG xacts, other CPU, check: from the run nearest the "
            "median.  PG xacts: transactions the workers ran, per job.  other: share of the "
            "machine's CPU used by unrelated processes during that window (noise; runs marked "
            f"* used >= {NOISY:.0f}%; they count in the median like the others).  errors: "
            "driver errors in the workers (of which 'database is locked'); warnings: log "
            "records >= WARNING in the workers; both summed over every run."
        ),
    )
    columns = [
        ("system", "left"),
        ("procs", "right"),
        ("jobs", "right"),
        ("enqueue\njobs/s", "right"),
        ("process\njobs/s", "right"),
        ("process/s\nof each run", "left"),
        ("x raw50", "right"),
        ("x pgq", "right"),
        ("peak RSS\nMiB", "right"),
        ("worker CPU\nus/job", "right"),
        ("PG CPU\nus/job", "right"),
        ("total CPU us/job\nof each run", "left"),
        ("PG xacts\nper job", "right"),
        ("other\nCPU", "right"),
        ("errors\n(locked)", "right"),
        ("warn-\nings", "right"),
        ("check", "left"),
    ]
    for header, justify in columns:
        table.add_column(
            header,
            justify=justify,
            no_wrap=header != "check",
            min_width=max(len(part) for part in header.split("\n")),
        )
    for r in rows:
        table.add_row(
            r.system,
            str(r.procs),
            f"{r.jobs:,}",
            _fmt_rate(r.enqueue_rate),
            _fmt_rate(r.process_rate),
            " ".join(
                ("failed" if x is None else _fmt_rate(x)) + ("*" if i in r.noisy_runs else "")
                for i, x in enumerate(r.rates)
            ),
            _fmt_ratio(r.process_rate, rate("raw-k50", r.procs)),
            _fmt_ratio(r.process_rate, rate("pgqueuer", r.procs)),
            "-" if r.peak_rss is None else f"{r.peak_rss / 2**20:.0f}",
            "-" if r.worker_cpu is None else f"{r.worker_cpu / r.jobs * 1e6:.0f}",
            "-" if r.db_cpu is None else f"{r.db_cpu / r.jobs * 1e6:.0f}",
            " ".join(f"{x:.0f}" for x in r.total_us) or "-",
            "-" if r.xacts_per_job is None else f"{r.xacts_per_job:.3f}",
            "-" if r.other_cpu is None else f"{r.other_cpu:.0f}%",
            f"{r.db_errors} ({r.locked_errors})",
            str(r.warnings),
            r.error or r.check,
        )
    console.print(table)
    return _targets(rows, opts)


def _measured(row: RunResult) -> bool:
    """At least one of the row's runs finished (its rates are theirs)."""
    return row.process_rate is not None and any(x is not None for x in row.rates)


def _targets(rows: list[RunResult], opts: Options) -> list[str]:
    """One PASS/MISS line per target of issue 20, from the medians of all runs."""
    lines: list[str] = []
    by = {(r.system, r.procs): r for r in rows if _measured(r)}

    def mark(good: bool) -> str:
        return "[green]PASS[/]" if good else "[red]MISS[/]"

    def ratio(name: str, a: tuple[str, int], b: tuple[str, int], need: float) -> None:
        ours, ref = by.get(a), by.get(b)
        if ours is None or ref is None or not ref.process_rate:
            lines.append(f"[dim]-    {name}: not measured in this run[/]")
            return
        value = (ours.process_rate or 0.0) / ref.process_rate
        lines.append(
            f"{mark(value >= need)} {name}: {value:.2f}x (need >= {need}x; "
            f"{ours.process_rate:,.0f} vs {ref.process_rate:,.0f} jobs/s)"
        )

    def at_most(name: str, key: tuple[str, int], value: float | None, limit: float) -> None:
        if key not in by or value is None:
            lines.append(f"[dim]-    {name}: not measured in this run[/]")
            return
        lines.append(f"{mark(value <= limit)} {name}: {value:.0f} us (need <= {limit:.0f} us)")

    for procs in opts.procs:
        ratio(
            f"taskdb-pg with no tuning vs pgqueuer's default, {procs} proc(s)",
            ("taskdb-pg", procs),
            ("pgqueuer", procs),
            1.0,
        )
    best = max(
        (r for r in rows if r.system.startswith("taskdb-pg") and r.procs == 4 and _measured(r)),
        key=lambda r: r.process_rate or 0.0,
        default=None,
    )
    best_name = best.system if best else "taskdb-pg-tuned"
    ratio(f"{best_name} 4 procs vs raw claim-50 loop", (best_name, 4), ("raw-k50", 4), 0.5)
    ratio(
        f"{best_name} 4 procs vs raw loop at its best claim size ({RAW_BEST_BATCH})",
        (best_name, 4),
        ("raw-k200", 4),
        0.5,
    )
    ratio(
        f"{best_name} 4 procs vs pgqueuer at its best batch",
        (best_name, 4),
        ("pgqueuer-best", 4),
        1.5,
    )
    raw_best, pgq_best = by.get(("raw-k200", 4)), by.get(("pgqueuer-best", 4))
    if raw_best and pgq_best and raw_best.process_rate and pgq_best.process_rate:
        lines.append(
            f"[dim]     for scale: 1.5x pgqueuer-best is {1.5 * pgq_best.process_rate:,.0f} "
            f"jobs/s; the raw claim-{RAW_BEST_BATCH} loop (no change feed, no handler, no "
            f"outcome) runs {raw_best.process_rate:,.0f} "
            f"({raw_best.process_rate / pgq_best.process_rate:.2f}x pgqueuer-best)[/]"
        )
    if best is not None and best.total_us:
        at_most(
            f"{best_name} 4 procs total CPU per job (worker + PG backends, median)",
            (best_name, 4),
            _median(best.total_us),
            75.0,
        )
    else:
        lines.append("[dim]-    taskdb-pg total CPU per job: not measured in this run[/]")
    sqlite1 = max(
        (r for r in rows if r.system.startswith("taskdb-sqlite") and r.procs == 1 and _measured(r)),
        key=lambda r: r.process_rate or 0.0,
        default=None,
    )
    if sqlite1 is None or sqlite1.process_rate is None:
        lines.append("[dim]-    taskdb-sqlite: not measured in this run[/]")
    else:
        name = sqlite1.system
        good = sqlite1.process_rate >= 10_000
        lines.append(
            f"{mark(good)} {name} 1 proc: {sqlite1.process_rate:,.0f} jobs/s (need >= 10,000)"
        )
        ratio(f"{name} 4 procs vs 1 proc", (name, 4), (name, 1), 1.0)
        at_most(
            f"{name} 1 proc worker CPU per job (median)",
            (name, 1),
            None if sqlite1.worker_cpu is None else sqlite1.worker_cpu / sqlite1.jobs * 1e6,
            80.0,
        )
        locked = sum(r.locked_errors for r in rows if r.system.startswith("taskdb-sqlite"))
        lines.append(f"{mark(locked == 0)} taskdb-sqlite: {locked} 'database is locked' errors")
    enq = [r for r in rows if r.system.startswith("taskdb-pg") and r.enqueue_rate]
    pgq = [r for r in rows if r.system.startswith("pgqueuer") and r.enqueue_rate]
    if enq and pgq:
        ours = _median([r.enqueue_rate or 0.0 for r in enq])
        theirs = _median([r.enqueue_rate or 0.0 for r in pgq])
        lines.append(
            f"{mark(ours >= theirs)} taskdb-pg submit_batch enqueue vs pgqueuer batch enqueue: "
            f"{ours / theirs:.2f}x (need >= 1.0x; {ours:,.0f} vs {theirs:,.0f} jobs/s)"
        )
    if opts.jobs < 10_000:
        lines.append(
            f"[yellow]note:[/] {opts.jobs:,} jobs per run is a smoke test: start-up effects "
            "dominate such short runs; judge the targets on a full run (20,000 jobs)"
        )
    disturbed = sum(len(r.noisy_runs) for r in rows)
    if disturbed:
        lines.append(
            f"[yellow]note:[/] {disturbed} run(s) marked * (other processes used >= "
            f"{NOISY:.0f}% of the CPU) count in the medians like every other run; rerun on an "
            "idle machine to judge the targets"
        )
    return lines


def _parse_args(argv: list[str] | None) -> Options:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=20_000, help="jobs per run (default 20000)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2000 jobs")
    parser.add_argument(
        "--procrastinate-jobs",
        type=int,
        default=1_000,
        help="cap on procrastinate's jobs per run (it is slow; default 1000)",
    )
    parser.add_argument(
        "--untuned-jobs",
        type=int,
        default=20_000,
        help="cap on jobs per run of taskdb-pg / taskdb-sqlite with default settings (20000)",
    )
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        help=f"systems to run, comma separated or repeated: {', '.join(SYSTEMS)}",
    )
    parser.add_argument("--procs", default="1,4", help="worker process counts (default 1,4)")
    parser.add_argument(
        "--repeat",
        type=int,
        default=None,
        help="runs per row, the median is reported (default 3; 1 with --quick)",
    )
    parser.add_argument(
        "--pg-url",
        default=os.environ.get("BENCH_PG_URL", DEFAULT_PG_URL),
        help="admin URL (scratch databases are created next to it; env BENCH_PG_URL)",
    )
    parser.add_argument(
        "--submit-batch",
        type=int,
        default=1_000,
        help="taskdb submit_batch call size (0: all jobs in one call; default 1000)",
    )
    parser.add_argument(
        "--taskdb-workers",
        type=int,
        default=100,
        help="taskdb-*-tuned: JobQueueServer workers (100, the best of 32/64/100/128/200)",
    )
    parser.add_argument(
        "--taskdb-batch",
        type=int,
        default=100,
        help="taskdb-*-tuned: JobQueueServer batch_size, the most jobs a claim takes (100)",
    )
    parser.add_argument(
        "--poll-interval",
        type=float,
        default=0.02,
        help="taskdb-*-tuned poll_interval, raw loop idle sleep, procrastinate polling (0.02)",
    )
    parser.add_argument("--concurrency", type=int, default=32, help="procrastinate concurrency")
    parser.add_argument(
        "--raw-conns", type=int, default=4, help="raw loop: connections (threads) per process (4)"
    )
    parser.add_argument(
        "--pgqueuer-best-batch",
        type=int,
        default=PGQUEUER_BEST_BATCH,
        help=f"pgqueuer-best's batch_size ({PGQUEUER_BEST_BATCH}: its fastest here, measured)",
    )
    parser.add_argument("--run-timeout", type=float, default=120.0, help="seconds per run")
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=10.0,
        help="before each run, wait up to this many seconds for an idle CPU "
        f"(default 10; {QUIET_BUDGET:.0f} s in all at most)",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write every run as JSON")
    args = parser.parse_args(argv)
    only = [s.strip() for item in args.only for s in item.split(",") if s.strip()]
    unknown = [s for s in only if s not in SYSTEMS]
    if unknown:
        parser.error(f"unknown system(s) {unknown}; choose from {', '.join(SYSTEMS)}")
    if args.repeat is None:
        args.repeat = 1 if args.quick else 3
    if args.repeat < 1 or args.jobs < 1:
        parser.error("--repeat and --jobs must be at least 1")
    return Options(
        pg_url=args.pg_url,
        jobs=2_000 if args.quick else args.jobs,
        procrastinate_jobs=args.procrastinate_jobs,
        untuned_jobs=args.untuned_jobs,
        procs=[int(p) for p in args.procs.split(",")],
        only=only or list(SYSTEMS),
        repeat=args.repeat,
        submit_batch=args.submit_batch,
        taskdb_workers=args.taskdb_workers,
        taskdb_batch=args.taskdb_batch,
        poll_interval=args.poll_interval,
        concurrency=args.concurrency,
        raw_conns=args.raw_conns,
        pgqueuer_best_batch=args.pgqueuer_best_batch,
        run_timeout=args.run_timeout,
        wait_quiet=args.wait_quiet,
        json_path=args.json,
    )


_interrupted = False


def _raise_interrupt(_signum: int, _frame: Any) -> None:
    """SIGINT / SIGTERM: remember it (a library may turn the KeyboardInterrupt into
    another error on its way out) and unwind through every ``finally``."""
    global _interrupted
    _interrupted = True
    raise KeyboardInterrupt


def _setup_lines(opts: Options) -> list[str]:
    from taskdb import settings

    batch = f"calls of {opts.submit_batch:,}" if opts.submit_batch else "one call"
    return [
        f"taskdb-pg / taskdb-sqlite: JobQueueClient.submit_batch in {batch}; per process "
        f"JobQueueServer(db, queue, handler, workers={settings.DEFAULT_WORKER_SLOTS}), its other "
        "defaults (what `taskdb worker mod:app` "
        f"starts), no-op async handler; at most {min(opts.jobs, opts.untuned_jobs):,} jobs per run",
        f"taskdb-*-tuned: the same with workers={opts.taskdb_workers}, "
        f"batch_size={opts.taskdb_batch}, poll_interval={opts.poll_interval}",
        f"raw-k10 / raw-k50 / raw-k200: psycopg 3 COPY enqueue; per process {opts.raw_conns} "
        "connections, each in its own thread, looping: claim 10 / 50 / 200 with a prepared "
        "UPDATE .. WHERE id IN (SELECT .. ORDER BY .. LIMIT .. FOR UPDATE SKIP LOCKED) "
        "RETURNING (binary results), then one prepared UPDATE marking them COMPLETED; same "
        "taskdb_jobs table (a migrated taskdb database), no change feed, no lease renewal",
        "pgqueuer / pgqueuer-best: Queries.enqueue of all jobs in one call (asyncpg); per "
        "process PgQueuer(AsyncpgDriver(conn)).run(batch_size=N), N = "
        f"{PGQUEUER_DEFAULT_BATCH} (its default) / {opts.pgqueuer_best_batch}, no-op async "
        "entrypoint",
        "procrastinate: batch_defer_async of all jobs in one call; per process "
        f"App.run_worker_async(concurrency={opts.concurrency}), PsycopgConnector pool of 10, "
        f"no-op async task; at most {min(opts.jobs, opts.procrastinate_jobs):,} jobs per run",
        f"enqueue: timed after an untimed warm-up of {WARMUP_JOBS} jobs on the same connection "
        "(deleted again); all from the benchmark process",
        f"before each run: wait up to {opts.wait_quiet:.0f} s ({QUIET_BUDGET:.0f} s in all) "
        f"for the CPU to be idle (< "
        f"{QUIET_BUSY:.0f}% busy); runs during which other processes used >= {NOISY:.0f}% of "
        f"the CPU are flagged (*) but counted: the median is of all {opts.repeat} run(s)",
        "processing: from 'go' (every worker imported, connected and waiting) until the "
        "benchmark process's COUNT sees every job done (polled every 50 ms, 10 ms near the "
        "end); a fresh scratch database (or SQLite file) per run",
    ]


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console

    opts = _parse_args(argv)
    console = Console()
    console.width = max(console.width, 200)
    signal.signal(signal.SIGINT, _raise_interrupt)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    logging.basicConfig(level=logging.WARNING)
    # "App is instantiated in the main Python module": expected for a benchmark script.
    logging.getLogger("procrastinate.blueprints").setLevel(logging.ERROR)

    for name in _drop_stale_databases(opts.pg_url):
        console.print(f"[yellow]dropped stale scratch database {name}[/]")

    console.rule("Machine")
    for key, value in _machine_facts(opts):
        console.print(f"[bold]{key}:[/] {value}")
    source, source_hash = _taskdb_source()
    console.print(f"[bold]taskdb under test:[/] {source}")
    console.rule("Setup")
    for line in _setup_lines(opts):
        console.print(f"- {line}")
    console.rule("Runs")

    runs: dict[tuple[str, int], list[RunResult]] = {}
    interrupted = False
    started = time.monotonic()
    try:
        for rep in range(opts.repeat):
            for name in SYSTEMS:
                if name not in opts.only:
                    continue
                system = SYSTEM_CLASSES[name](opts)
                for procs in opts.procs:
                    label = f"{name} x{procs}" + (f" (run {rep + 1})" if opts.repeat > 1 else "")
                    console.print(f"{label} ...", end=" ")
                    try:
                        result = _run_one(system, procs, console.print)
                    except Exception as exc:
                        if _interrupted:
                            raise KeyboardInterrupt from exc
                        result = RunResult(name, system.dialect, procs, system.jobs())
                        first = (str(exc).splitlines() or [""])[0][:120]
                        result.error = f"{type(exc).__name__}: {first}"
                        console.print(f"[red]failed[/]\n{traceback.format_exc()}")
                    else:
                        console.print(
                            f"enqueue {_fmt_rate(result.enqueue_rate)}/s, "
                            f"process {_fmt_rate(result.process_rate)}/s"
                            + (f" [red]{result.error}[/]" if result.error else "")
                        )
                    runs.setdefault((name, procs), []).append(result)
    except KeyboardInterrupt:
        interrupted = True
        console.print("\n[yellow]interrupted: scratch databases dropped; partial results[/]")
    console.print(f"[dim]total time {time.monotonic() - started:.0f} s[/]")
    if _taskdb_source()[1] != source_hash:
        console.print(
            "[bold red]taskdb's sources changed while the benchmark ran: the rows below mix "
            "versions; rerun on a stable tree (or an exported commit via PYTHONPATH)[/]"
        )
    if runs:
        rows = [_summarize(group) for group in runs.values()]
        console.rule("Results")
        lines = _report(console, rows, opts)
        console.rule("Targets")
        for line in lines:
            console.print(line)
    if opts.json_path is not None:
        opts.json_path.parent.mkdir(parents=True, exist_ok=True)
        every = [dataclasses.asdict(r) for group in runs.values() for r in group]
        opts.json_path.write_text(json.dumps(every, indent=2) + "\n")
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
