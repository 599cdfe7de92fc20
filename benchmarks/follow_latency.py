"""Follow latency: from a change committed in one process to its callback in another.

Section ``state`` (job state changes): this process submits jobs one at a time, at
random spacing (5-25 ms); a follower subprocess, subscribed with
``JobQueueClient.subscribe_to_changes``, stamps each ``submitted`` change it is
called with. Latency = that stamp - the moment the submit was issued (so an upper
bound: it includes the submit's own round trip and commit). Both stamps are
``time.monotonic()``, one clock for every process on Linux. Runs on a scratch
database each: PostgreSQL with NOTIFY, PostgreSQL polling only (``TASKDB_LISTEN=0``),
SQLite (polling), all with the same follower poll interval (default 0.1 s).

Targets: PostgreSQL with NOTIFY p99 < 50 ms; polling alone p99 < poll interval + 20 ms.

Section ``channel``: the same-process stream channel, a handler's
``emit_stream_event`` reaching one ``on_stream`` listener by direct call, against
calling the listener in a plain loop. Target: at least 500,000 events/s.

Section ``stream``: durable streams, a handler writing 20,000 text deltas with
``durable_stream=True`` (rows per second, until the job completed), then a
follower in another process reading them all back through ``follow()``.

Sections are chosen with ``--only`` (comma-separated); each is a function in
``SECTIONS``. ``python benchmarks/follow_latency.py --help``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import math
import os
import random
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import psycopg
from sqlalchemy import make_url

import taskdb
from taskdb import JobChange, JobQueueClient

DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
QUEUE = "follow"
WARMUP = 10  # first samples of each run, not counted (connections being opened)
RECEIVE_TIMEOUT = 30.0


@dataclasses.dataclass(frozen=True)
class Options:
    pg_url: str
    samples: int
    poll: float


@dataclasses.dataclass(frozen=True)
class Row:
    section: str
    database: str
    wakeup: str
    poll: float
    samples: int = 0
    p50_ms: float | None = None
    p99_ms: float | None = None
    max_ms: float | None = None
    target_ms: float | None = None
    note: str = ""

    @property
    def met(self) -> str:
        if self.p99_ms is None or self.target_ms is None:
            return "-"
        return "yes" if self.p99_ms < self.target_ms else "NO"


# -- scratch databases ---------------------------------------------------------------------


@contextlib.asynccontextmanager
async def scratch_pg(admin_url: str) -> AsyncIterator[str]:
    name = f"flbench_{uuid.uuid4().hex[:10]}"
    admin = make_url(admin_url).render_as_string(hide_password=False)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    try:
        db = taskdb.connect(url)
        db.migrate()
        await db.aclose()
        yield url
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.asynccontextmanager
async def scratch_sqlite() -> AsyncIterator[str]:
    with tempfile.TemporaryDirectory(prefix="flbench_") as tmp:
        url = f"sqlite:///{Path(tmp) / 'follow.sqlite3'}"
        db = taskdb.connect(url)
        db.migrate()
        await db.aclose()
        yield url


# -- the follower subprocess -----------------------------------------------------------------


async def follower(url: str, poll: float) -> None:
    """Print ``ready``, then ``<job id> <monotonic time>`` for each submitted job."""
    db = taskdb.connect(url)
    out = sys.stdout

    def stamp(change: JobChange) -> None:
        if change.kind == "submitted":
            out.write(f"{change.job_id} {time.monotonic()!r}\n")
            out.flush()

    await JobQueueClient(db, QUEUE, poll_interval=poll).subscribe_to_changes(stamp)
    listener = db.listener()
    if listener is not None:
        await listener.listening()
    out.write("ready\n")
    out.flush()
    await asyncio.Event().wait()  # until killed


# -- section "state" -------------------------------------------------------------------------


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    return sorted_values[max(0, math.ceil(q * len(sorted_values)) - 1)]


async def measure(url: str, poll: float, samples: int, listen: bool) -> list[float]:
    """Latencies (seconds) of ``samples`` submissions seen by a follower subprocess."""
    env = dict(os.environ, TASKDB_LISTEN="1" if listen else "0")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "--follower",
        url,
        "--poll",
        str(poll),
        stdout=asyncio.subprocess.PIPE,
        env=env,
    )
    assert proc.stdout is not None
    received: dict[int, float] = {}
    expected = samples + WARMUP
    complete = asyncio.Event()
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), RECEIVE_TIMEOUT)
        if line.strip() != b"ready":
            raise RuntimeError(f"follower did not start: {line!r}")

        async def read() -> None:
            assert proc.stdout is not None
            async for raw in proc.stdout:
                job_id, at = raw.split()
                received[int(job_id)] = float(at)
                if len(received) == expected:
                    complete.set()

        reader = asyncio.ensure_future(read())
        db = taskdb.connect(url, listen=False)
        client = JobQueueClient(db, QUEUE)
        sent: dict[int, float] = {}
        for i in range(expected):
            await asyncio.sleep(random.uniform(0.005, 0.025))
            issued = time.monotonic()
            handle = await client.submit({"i": i})
            sent[handle.id] = issued
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(complete.wait(), RECEIVE_TIMEOUT)
        reader.cancel()
        await db.aclose()
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
    if len(received) < len(sent):
        raise RuntimeError(f"follower saw {len(received)} of {len(sent)} submissions")
    ordered = sorted(sent)[WARMUP:]
    return sorted(received[job_id] - sent[job_id] for job_id in ordered)


async def state_section(opts: Options) -> list[Row]:
    runs: list[tuple[str, str, bool, float]] = [
        ("PostgreSQL", "NOTIFY", True, 0.050),
        ("PostgreSQL", "polling", False, opts.poll + 0.020),
        ("SQLite", "polling", False, opts.poll + 0.020),
    ]
    rows = []
    for database, wakeup, listen, target in runs:
        row = Row("state", database, wakeup, opts.poll, target_ms=target * 1000)
        scratch = scratch_pg(opts.pg_url) if database == "PostgreSQL" else scratch_sqlite()
        try:
            async with scratch as url:
                latencies = await measure(url, opts.poll, opts.samples, listen)
        except (OSError, psycopg.Error, taskdb.TaskdbError, RuntimeError) as exc:
            rows.append(dataclasses.replace(row, note=f"not run: {exc}".splitlines()[0]))
            continue
        rows.append(
            dataclasses.replace(
                row,
                samples=len(latencies),
                p50_ms=percentile(latencies, 0.50) * 1000,
                p99_ms=percentile(latencies, 0.99) * 1000,
                max_ms=latencies[-1] * 1000,
            )
        )
    return rows


# -- sections "channel" and "stream": events per second ----------------------------------


@dataclasses.dataclass(frozen=True)
class Rate:
    section: str
    database: str
    what: str
    events: int
    seconds: float
    baseline: float | None = None  # events/s of the baseline, same run
    target: float | None = None
    note: str = ""

    @property
    def per_second(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else math.inf

    @property
    def met(self) -> str:
        if self.target is None:
            return "-"
        return "yes" if self.per_second >= self.target else "NO"


CHANNEL_EVENTS = 1_000_000
STREAM_EVENTS = 20_000


async def channel_section(opts: Options) -> list[Rate | Row]:
    """Same-process stream channel: a handler's emit_stream_event to one on_stream
    listener of an attached client, against calling the listener directly."""
    from taskdb.streams import TextDelta

    event = TextDelta("text", "x")
    count = 0

    def listener(_event: object) -> None:
        nonlocal count
        count += 1

    started = time.perf_counter()
    for _ in range(CHANNEL_EVENTS):
        listener(event)
    direct = CHANNEL_EVENTS / (time.perf_counter() - started)
    timing: dict[str, float] = {}

    async def handler(_input: object, ctx: taskdb.JobContext) -> dict[str, int]:
        begin = time.perf_counter()
        for _ in range(CHANNEL_EVENTS):
            ctx.emit_stream_event(event)
        timing["seconds"] = time.perf_counter() - begin
        return {}

    async with scratch_sqlite() as url:
        db = taskdb.connect(url)
        server = taskdb.JobQueueServer(db, QUEUE, handler, poll_interval=0.01)
        client = JobQueueClient(db, QUEUE, poll_interval=0.01)
        client.attach(server)
        handle = await client.submit({})
        on_stream = handle.on_stream
        assert on_stream is not None
        on_stream(listener)
        count = 0
        await server.start()
        await handle.wait(timeout=120)
        await server.stop()
        await db.aclose()
    note = "" if count == CHANNEL_EVENTS else f"listener saw {count}"
    return [
        Rate(
            "channel",
            "(none)",
            "emit -> 1 listener",
            CHANNEL_EVENTS,
            timing["seconds"],
            baseline=direct,
            target=500_000,
            note=note,
        )
    ]


STREAM_FOLLOWER = """
import asyncio, sys, time, taskdb
async def main():
    db = taskdb.connect(sys.argv[1])
    client = taskdb.JobQueueClient(db, "follow", poll_interval=0.01)
    count, first = 0, None
    async for _offset, _event in client.follow(int(sys.argv[2])):
        first = first or time.perf_counter()
        count += 1
    print(count, time.perf_counter() - first)
    await db.aclose()
asyncio.run(main())
"""


async def stream_section(opts: Options) -> list[Rate | Row]:
    """Durable streams: a handler writes text deltas (durable_stream=True), then a
    follower in another process reads them all back through follow()."""
    rates: list[Rate | Row] = []
    for database in ("PostgreSQL", "SQLite"):
        scratch = scratch_pg(opts.pg_url) if database == "PostgreSQL" else scratch_sqlite()
        async with scratch as url:
            rates += await _stream_rates(database, url)
    return rates


async def _stream_rates(database: str, url: str) -> list[Rate | Row]:
    from taskdb.streams import TextDelta

    begin: list[float] = []

    async def handler(_input: object, ctx: taskdb.JobContext) -> dict[str, int]:
        begin.append(time.perf_counter())
        for i in range(STREAM_EVENTS):
            await ctx.emit_stream_event(TextDelta("text", f"delta {i} "))
        return {}

    db = taskdb.connect(url)
    server = taskdb.JobQueueServer(db, QUEUE, handler, poll_interval=0.01)
    client = JobQueueClient(db, QUEUE, poll_interval=0.01)
    await server.start()
    handle = await client.submit({}, durable_stream=True)
    await handle.wait(timeout=300)  # the stream is flushed before the job completes
    written = time.perf_counter() - begin[0]
    await server.stop()
    await db.aclose()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", STREAM_FOLLOWER, url, str(handle.id), stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    events, seconds = out.split()
    return [
        Rate("stream", database, "handler -> rows", STREAM_EVENTS, written),
        Rate("stream", database, "follow() in another process", int(events), float(seconds)),
    ]


SECTIONS: dict[str, Callable[[Options], Awaitable[list[Row] | list[Rate | Row]]]] = {
    "state": state_section,
    "channel": channel_section,
    "stream": stream_section,
}


# -- report ----------------------------------------------------------------------------------


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def print_rates(rates: list[Rate]) -> None:
    print()
    print("| section | database | path | events | events/s | baseline events/s | target | met |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rates:
        base = "-" if r.baseline is None else f"{r.baseline:,.0f}"
        target = "-" if r.target is None else f">= {r.target:,.0f}/s"
        print(
            f"| {r.section} | {r.database} | {r.what} | {r.events:,} | {r.per_second:,.0f} "
            f"| {base} | {target} | {r.met} |" + (f" {r.note}" if r.note else "")
        )


def print_table(rows: list[Row]) -> None:
    if not rows:
        return
    print(
        "| section | database | wake-up | poll interval | samples "
        "| p50 ms | p99 ms | max ms | target p99 | met |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        target = "-" if r.target_ms is None else f"< {r.target_ms:.0f} ms"
        print(
            f"| {r.section} | {r.database} | {r.wakeup} | {r.poll:g} s | {r.samples} "
            f"| {_ms(r.p50_ms)} | {_ms(r.p99_ms)} | {_ms(r.max_ms)} | {target} | {r.met} |"
            + (f" {r.note}" if r.note else "")
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--only",
        default=",".join(SECTIONS),
        help=f"comma-separated sections to run (default: all of {', '.join(SECTIONS)})",
    )
    parser.add_argument(
        "--pg-url",
        default=os.environ.get("BENCH_PG_URL", DEFAULT_PG_URL),
        help="admin URL; scratch databases are created next to it (env BENCH_PG_URL)",
    )
    parser.add_argument("--samples", type=int, default=300, help="changes per run (300)")
    parser.add_argument("--poll", type=float, default=0.1, help="follower poll interval (0.1 s)")
    parser.add_argument("--follower", metavar="URL", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.follower:
        asyncio.run(follower(args.follower, args.poll))
        return 0
    chosen = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    opts = Options(args.pg_url, args.samples, args.poll)
    results: list[Row | Rate] = []
    for name in chosen:
        results += asyncio.run(SECTIONS[name](opts))
    print_table([r for r in results if isinstance(r, Row)])
    rates = [r for r in results if isinstance(r, Rate)]
    if rates:
        print_rates(rates)
    return 0


if __name__ == "__main__":
    sys.exit(main())
