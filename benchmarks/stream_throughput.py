"""Streaming throughput: taskdb's binary output streams against raw driver loops.

Sections (``--only``, default all):

- ``text``: text deltas/s through a 3-task streaming chain run by the graph
  runner (a producer streaming N ``TextDelta`` s, two tasks each reading its
  input stream and re-emitting every delta upper-cased), with
  ``should_accumulate`` on (the leaf's text is kept in its output) and off;
  against the same 3 stages as plain chained async generators of strings in
  the same process (the leaf's text joined at the end). Rounds alternate who
  goes first; the median is reported. Target: at least 200,000 deltas/s.
- ``binary``: N MiB of 1 MiB chunks streamed through
  ``SqlTaskOutputRepository.save_output_stream`` on PostgreSQL and on SQLite,
  against a raw baseline writing the same bytes in the same run (PostgreSQL:
  ``lo_create`` + ``lo_put`` per chunk on a plain psycopg connection, one
  transaction; SQLite: ``sqlite3`` chunk-row INSERTs in WAL mode, one
  transaction); then the read back through ``get_output_stream_by_ref``
  against a raw read (``lo_get`` per chunk with binary-format results / one
  SELECT over the chunk rows). ``blob_refs.py`` compares against every raw
  PostgreSQL path (``lo_put``, ``lowrite``/``loread`` on a descriptor, bytea COPY).

Before each measured run the database is checkpointed (``CHECKPOINT`` /
``wal_checkpoint(TRUNCATE)``) so that no run pays for the dirty pages of the
one before; raw and taskdb alternate going first. Every measured writer and
reader runs in a fresh subprocess, which first
imports its library, connects and does an untimed warm-up, then resets its
peak-RSS mark (``/proc/self/clear_refs``); the reported RSS growth is the peak
during the timed part minus the RSS just before it. Each dialect gets a
scratch database (PostgreSQL ``CREATE DATABASE``, dropped after; an SQLite
file in a temporary directory). MB/s counts 10^6 bytes.

Run ``python benchmarks/stream_throughput.py --help`` for the flags.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import platform
import sqlite3
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

# Only the standard library at module level: each measured subprocess imports
# nothing but the library it measures.

DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
MiB = 1024 * 1024
WRITE_TARGET = 0.8  # taskdb / raw
READ_TARGET = 0.8
RSS_TARGET_MIB = 64  # peak RSS growth of a writer streaming 1 GiB
TEXT_TARGET = 200_000  # text deltas/s through the 3-task chain
WORKER_TIMEOUT = 1800.0


# ---------------------------------------------------------------------------------------
# Measured subprocesses
# ---------------------------------------------------------------------------------------


def _rss(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def _reset_peak() -> int:
    """Reset this process's peak-RSS mark; returns the RSS now (the baseline)."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")
    return _rss("VmRSS")


def _chunks_sync(count: int, size: int) -> Iterator[bytes]:
    """``count`` fresh ``size``-byte chunks (a new object each, as a producer makes)."""
    payload = os.urandom(size)
    for _ in range(count):
        yield bytes(memoryview(payload))


async def _chunks(count: int, size: int) -> AsyncIterator[bytes]:
    for chunk in _chunks_sync(count, size):
        yield chunk


def _timed(run: Callable[[], Any]) -> dict[str, Any]:
    baseline = _reset_peak()
    started = time.perf_counter()
    result = run()
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "rss_growth": _rss("VmHWM") - baseline, "result": result}


def _worker_taskdb(spec: dict[str, Any]) -> dict[str, Any]:
    import taskdb
    from taskdb.cache import BlobStore, SqlTaskOutputRepository, make_cache_ref

    async def main() -> dict[str, Any]:
        async with taskdb.connect(spec["url"]) as db:
            tuned = {"commit_bytes": spec["commit"]} if spec.get("commit") else {}
            repo = SqlTaskOutputRepository(db, blob_store=BlobStore(db, **tuned))
            assert repo.save_output_stream is not None
            assert repo.get_output_stream_by_ref is not None
            if spec["op"] == "write":  # untimed warm-up: pool, schema check, write path
                await repo.save_output_stream("bench", {}, "warmup", _chunks(1, spec["chunk"]))
            else:
                await repo.size()
            if spec["op"] == "write":
                chunks = _chunks(spec["count"], spec["chunk"])
                started, baseline = time.perf_counter(), _reset_peak()
                ref = await repo.save_output_stream("bench", {}, "out", chunks)
                seconds = time.perf_counter() - started
                done = {"key": ref["$ref"], "bytes": ref.get("size")}
            else:
                started, baseline = time.perf_counter(), _reset_peak()
                ref = spec.get("ref") or make_cache_ref(spec["key"])  # a row's ref as JSON
                stream = await repo.get_output_stream_by_ref(ref)
                assert stream is not None, "blob not found"
                total = 0
                async for chunk in stream:
                    total += len(chunk)
                seconds = time.perf_counter() - started
                done = {"bytes": total}
            return {"seconds": seconds, "rss_growth": _rss("VmHWM") - baseline, **done}

    return asyncio.run(main())


def _worker_raw_pg(spec: dict[str, Any]) -> dict[str, Any]:
    import psycopg

    with psycopg.connect(spec["url"]) as conn:
        conn.execute("SELECT 1").fetchone()
        conn.commit()
        chunk = spec["chunk"]
        if spec["op"] == "write":

            def write() -> dict[str, Any]:
                row = conn.execute("SELECT lo_create(0)").fetchone()
                assert row is not None
                oid, offset = int(row[0]), 0
                for data in _chunks_sync(spec["count"], chunk):
                    conn.execute("SELECT lo_put(%s, %s, %s)", (oid, offset, data))
                    offset += len(data)
                conn.commit()
                return {"key": oid, "bytes": offset}

            timed = _timed(write)
        else:
            oid = int(spec["key"])

            def read() -> dict[str, Any]:
                offset, total = 0, spec["count"] * chunk
                cur = conn.cursor(binary=True)  # bytea in text format is hex: twice the bytes
                while offset < total:
                    sql = "SELECT lo_get(%s, %s, %s)"
                    data = cur.execute(sql, (oid, offset, chunk), prepare=True).fetchone()
                    assert data is not None
                    offset += len(data[0])
                conn.commit()
                return {"bytes": offset}

            timed = _timed(read)
    return {"seconds": timed["seconds"], "rss_growth": timed["rss_growth"], **timed["result"]}


def _worker_raw_sqlite(spec: dict[str, Any]) -> dict[str, Any]:
    conn = sqlite3.connect(spec["path"], isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    blob_id = -1  # raw rows in the chunk table, under an id taskdb never gives out
    if spec["op"] == "write":

        def write() -> dict[str, Any]:
            total = 0
            conn.execute("BEGIN IMMEDIATE")
            for seq, data in enumerate(_chunks_sync(spec["count"], spec["chunk"])):
                conn.execute(
                    "INSERT INTO taskdb_blob_chunks (blob_id, seq, data) VALUES (?, ?, ?)",
                    (blob_id, seq, data),
                )
                total += len(data)
            conn.execute("COMMIT")
            return {"key": blob_id, "bytes": total}

        timed = _timed(write)
    else:

        def read() -> dict[str, Any]:
            rows = conn.execute(
                "SELECT data FROM taskdb_blob_chunks WHERE blob_id = ? ORDER BY seq", (blob_id,)
            )
            return {"bytes": sum(len(data) for (data,) in rows)}

        timed = _timed(read)
    conn.close()
    return {"seconds": timed["seconds"], "rss_growth": timed["rss_growth"], **timed["result"]}


WORKERS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "taskdb": _worker_taskdb,
    "raw-postgresql": _worker_raw_pg,
    "raw-sqlite": _worker_raw_sqlite,
}


def _checkpoint(spec: dict[str, Any]) -> None:
    """Flush the database's dirty state, so that no run pays for the one before."""
    if spec["url"].startswith("postgresql"):
        import psycopg

        with psycopg.connect(_plain(spec["url"]), autocommit=True) as conn:
            conn.execute("CHECKPOINT")
    else:
        with contextlib.closing(sqlite3.connect(spec["url"].removeprefix("sqlite:///"))) as conn:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def _run_worker(spec: dict[str, Any], script: str = __file__) -> dict[str, Any]:
    """Run one measurement in a fresh interpreter (``script --worker spec``, a script
    whose ``main`` dispatches on ``spec["system"]``); returns its JSON result."""
    _checkpoint(spec)
    proc = subprocess.run(
        [sys.executable, script, "--worker", json.dumps(spec)],
        capture_output=True,
        text=True,
        timeout=WORKER_TIMEOUT,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{spec['system']} {spec['op']} failed:\n{proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    expected = spec["count"] * spec["chunk"]
    if result["bytes"] != expected:
        raise RuntimeError(f"{spec['system']} {spec['op']}: {result['bytes']} != {expected} bytes")
    return result


# ---------------------------------------------------------------------------------------
# Scratch databases (created and dropped like the queue benchmark's)
# ---------------------------------------------------------------------------------------


def _drop_blobs(url: str, raw_key: Any) -> None:
    """Delete what a round wrote (the raw bytes and taskdb's unlinked blobs)."""
    import taskdb
    from taskdb.cache import collect_garbage

    if url.startswith("postgresql"):
        import psycopg

        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("SELECT lo_unlink(%s)", (int(raw_key),))
    else:
        with contextlib.closing(sqlite3.connect(url.removeprefix("sqlite:///"))) as conn:
            conn.execute("DELETE FROM taskdb_blob_chunks WHERE blob_id = ?", (raw_key,))
            conn.commit()

    async def gc() -> None:
        async with taskdb.connect(url) as db:
            await collect_garbage(db, grace_seconds=0)

    asyncio.run(gc())


# ---------------------------------------------------------------------------------------
# The binary section
# ---------------------------------------------------------------------------------------


@dataclasses.dataclass
class Options:
    size_mib: int
    chunk: int
    repeat: int
    dialects: list[str]
    only: list[str]
    pg_url: str
    deltas: int = 200_000
    text_rounds: int = 5


@dataclasses.dataclass
class Row:
    dialect: str
    op: str
    taskdb_mbps: float
    raw_mbps: float
    taskdb_rss_mib: float
    raw_rss_mib: float

    @property
    def ratio(self) -> float:
        return self.taskdb_mbps / self.raw_mbps

    def verdicts(self) -> list[str]:
        target = WRITE_TARGET if self.op == "write" else READ_TARGET
        out = [f"{'ok' if self.ratio >= target else 'BELOW'} (>= {target:.1f}x raw)"]
        if self.op == "write":
            # the 64 MiB budget is for 1 GiB; a smaller run must stay within it too
            good = self.taskdb_rss_mib < RSS_TARGET_MIB
            out.append(f"RSS {'ok' if good else 'OVER'} (< {RSS_TARGET_MIB} MiB)")
        return out


def _mbps(result: dict[str, Any]) -> float:
    return float(result["bytes"]) / result["seconds"] / 1e6


def _binary(opts: Options, say: Callable[[str], None]) -> list[Row]:
    from queue_throughput import _scratch_pg, _scratch_sqlite

    import taskdb

    rows: list[Row] = []
    count = opts.size_mib * MiB // opts.chunk
    for dialect in opts.dialects:
        scratch = (
            _scratch_pg(opts.pg_url, "stream") if dialect == "postgresql" else _scratch_sqlite()
        )
        with scratch as url:
            taskdb.connect(url).migrate()
            raw_spec: dict[str, Any] = {"system": f"raw-{dialect}", "count": count}
            raw_spec.update(chunk=opts.chunk, url=_plain(url), path=url.removeprefix("sqlite:///"))
            ours: dict[str, Any] = {"system": "taskdb", "count": count, "chunk": opts.chunk}
            ours["url"] = url
            samples: dict[tuple[str, str], list[dict[str, Any]]] = {}
            for rep in range(opts.repeat):
                suffix = f" (run {rep + 1}/{opts.repeat})" if opts.repeat > 1 else ""
                say(f"{dialect}: writing and reading {opts.size_mib} MiB{suffix} ...")
                # alternate who goes first; every run starts from a checkpointed database
                first, second = (raw_spec, ours) if rep % 2 == 0 else (ours, raw_spec)
                done = {s["system"]: _run_worker({**s, "op": "write"}) for s in (first, second)}
                raw_w, our_w = done[raw_spec["system"]], done["taskdb"]
                keys = {raw_spec["system"]: raw_w["key"], "taskdb": our_w["key"]}
                for s in (first, second):
                    done[s["system"]] = _run_worker({**s, "op": "read", "key": keys[s["system"]]})
                raw_r, our_r = done[raw_spec["system"]], done["taskdb"]
                for key, value in (
                    (("raw", "write"), raw_w),
                    (("taskdb", "write"), our_w),
                    (("raw", "read"), raw_r),
                    (("taskdb", "read"), our_r),
                ):
                    samples.setdefault(key, []).append(value)
                say(
                    f"  write {_mbps(our_w):.0f} vs raw {_mbps(raw_w):.0f} MB/s, "
                    f"read {_mbps(our_r):.0f} vs raw {_mbps(raw_r):.0f} MB/s"
                )
                _drop_blobs(url, raw_w["key"])
            for op in ("write", "read"):
                ours_s, raw_s = samples["taskdb", op], samples["raw", op]
                rows.append(
                    Row(
                        dialect,
                        op,
                        statistics.median(_mbps(s) for s in ours_s),
                        statistics.median(_mbps(s) for s in raw_s),
                        max(s["rss_growth"] for s in ours_s) / MiB,
                        max(s["rss_growth"] for s in raw_s) / MiB,
                    )
                )
    return rows


def _plain(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


def _report_binary(rows: list[Row], opts: Options) -> list[str]:
    header = (
        f"{'dialect':<11} {'op':<6} {'taskdb MB/s':>11} {'raw MB/s':>9} {'ratio':>6} "
        f"{'taskdb RSS+':>11} {'raw RSS+':>9}  verdict"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(
            f"{r.dialect:<11} {r.op:<6} {r.taskdb_mbps:>11.1f} {r.raw_mbps:>9.1f} "
            f"{r.ratio:>5.2f}x {r.taskdb_rss_mib:>8.1f} MiB {r.raw_rss_mib:>5.1f} MiB  "
            + "; ".join(r.verdicts())
        )
    return lines


# ---------------------------------------------------------------------------------------
# The text section
# ---------------------------------------------------------------------------------------


@dataclasses.dataclass
class TextRow:
    mode: str
    taskdb_rate: float  # deltas/s, median over the rounds
    baseline_rate: float
    rates: list[float]  # taskdb's every round

    @property
    def ratio(self) -> float:
        return self.taskdb_rate / self.baseline_rate

    def verdict(self) -> str:
        good = self.taskdb_rate >= TEXT_TARGET
        return f"{'ok' if good else 'BELOW'} (>= {TEXT_TARGET:,} deltas/s)"


def _text_chain(count: int) -> Any:
    """words -> upper -> upper2: ``count`` text deltas, each re-emitted upper-cased."""
    from taskdb.graph import Task, TaskContext, TaskGraph
    from taskdb.streams import Finish, StreamEvent, TextDelta

    text = {"type": "object", "properties": {"text": {"type": "string", "x-stream": "append"}}}

    class Words(Task):
        input_schema = {"type": "object", "properties": {"count": {"type": "integer"}}}
        output_schema = text
        cacheable = False

        async def execute_stream(
            self, inputs: dict[str, Any], ctx: TaskContext
        ) -> AsyncIterator[StreamEvent]:
            for i in range(inputs["count"]):
                yield TextDelta("text", f"w{i} ")
            yield Finish({})

    class Upper(Task):
        input_schema = text
        output_schema = text
        cacheable = False

        async def execute_stream(
            self, inputs: dict[str, Any], ctx: TaskContext
        ) -> AsyncIterator[StreamEvent]:
            async for event in ctx.input_stream("text"):
                if isinstance(event, TextDelta):
                    yield TextDelta("text", event.text.upper())
            yield Finish({})

    graph = TaskGraph()
    graph.add(Words("words", count=count))
    graph.add(Upper("upper"))
    graph.add(Upper("upper2"))
    graph.connect("words", "text", "upper", "text")
    graph.connect("upper", "text", "upper2", "text")
    return graph


async def _text_taskdb(count: int, accumulate: bool) -> tuple[float, int]:
    """Seconds for one run of the chain, and the length of the leaf's text (or -1)."""
    from taskdb.graph import RunConfig

    graph = _text_chain(count)  # built untimed
    started = time.perf_counter()
    result = await graph.run(config=RunConfig(should_accumulate=accumulate))
    seconds = time.perf_counter() - started
    return seconds, len(result["upper2"]["text"]) if accumulate else -1


async def _text_baseline(count: int) -> tuple[float, int]:
    """The same three stages as plain chained async generators of strings."""

    async def words(n: int) -> AsyncIterator[str]:
        for i in range(n):
            yield f"w{i} "

    async def upper(source: AsyncIterator[str]) -> AsyncIterator[str]:
        async for piece in source:
            yield piece.upper()

    started = time.perf_counter()
    parts = [piece async for piece in upper(upper(words(count)))]
    leaf = "".join(parts)
    return time.perf_counter() - started, len(leaf)


def _text(opts: Options, say: Callable[[str], None]) -> list[TextRow]:
    import gc

    count = opts.deltas
    expected = sum(len(f"w{i} ") for i in range(count))
    rows: list[TextRow] = []
    for accumulate in (True, False):
        mode = f"accumulate {'on' if accumulate else 'off'}"
        ours: list[float] = []
        base: list[float] = []
        for rep in range(opts.text_rounds):
            runs = [
                ("taskdb", _text_taskdb(count, accumulate)),
                ("baseline", _text_baseline(count)),
            ]
            if rep % 2:
                runs.reverse()
            for name, coro in runs:
                gc.collect()
                seconds, length = asyncio.run(coro)
                if length not in (-1, expected):
                    raise RuntimeError(f"text {name}: {length} characters, not {expected}")
                (ours if name == "taskdb" else base).append(count / seconds)
            say(f"  {mode}: taskdb {ours[-1]:,.0f} vs baseline {base[-1]:,.0f} deltas/s")
        rows.append(TextRow(mode, statistics.median(ours), statistics.median(base), ours))
    return rows


def _report_text(rows: list[TextRow], opts: Options) -> list[str]:
    header = (
        f"{'mode':<15} {'taskdb deltas/s':>15} {'baseline deltas/s':>17} {'ratio':>6} "
        f"{'taskdb min..max':>19}  verdict"
    )
    lines = [
        f"{opts.deltas:,} text deltas per round through words -> upper -> upper2, "
        f"{opts.text_rounds} rounds (median);",
        "baseline: the same 3 stages as chained async generators of strings",
        header,
        "-" * len(header),
    ]
    for r in rows:
        spread = f"{min(r.rates):,.0f}..{max(r.rates):,.0f}"
        lines.append(
            f"{r.mode:<15} {r.taskdb_rate:>15,.0f} {r.baseline_rate:>17,.0f} {r.ratio:>5.2f}x "
            f"{spread:>19}  {r.verdict()}"
        )
    return lines


SECTIONS: dict[str, tuple[Callable[..., list[Any]], Callable[..., list[str]]]] = {
    "text": (_text, _report_text),
    "binary": (_binary, _report_binary),
}


# ---------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------


def _add_common_args(parser: argparse.ArgumentParser, quick: str) -> None:
    """The flags this benchmark shares with ``blob_refs.py``."""
    parser.add_argument("--size-mib", type=int, default=1024, help="MiB per stream (1024)")
    parser.add_argument("--quick", action="store_true", help=f"smoke run: 128 MiB, {quick}")
    parser.add_argument(
        "--repeat", type=int, default=None, help="rounds, the median is reported (3; 1 --quick)"
    )
    parser.add_argument(
        "--dialects", default="postgresql,sqlite", help="postgresql,sqlite (default both)"
    )
    parser.add_argument(
        "--pg-url",
        default=os.environ.get("BENCH_PG_URL", DEFAULT_PG_URL),
        help="admin URL (scratch databases are created next to it; env BENCH_PG_URL)",
    )


def _common_values(
    parser: argparse.ArgumentParser, args: argparse.Namespace
) -> tuple[int, int, list[str]]:
    """(size in MiB, rounds, dialects) from the flags of :func:`_add_common_args`."""
    dialects = [d.strip() for d in args.dialects.split(",") if d.strip()]
    if not dialects or any(d not in ("postgresql", "sqlite") for d in dialects):
        parser.error("--dialects takes postgresql and/or sqlite")
    repeat = args.repeat if args.repeat is not None else (1 if args.quick else 3)
    size = 128 if args.quick and args.size_mib == 1024 else args.size_mib
    if repeat < 1 or size < 1:
        parser.error("--repeat and --size-mib must be >= 1")
    return size, repeat, dialects


def _parse_args(argv: list[str] | None) -> Options:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    _add_common_args(parser, "one repeat, 3 text rounds")
    parser.add_argument("--chunk-kib", type=int, default=1024, help="chunk size in KiB (1024)")
    parser.add_argument(
        "--deltas", type=int, default=200_000, help="text deltas per round (200,000)"
    )
    parser.add_argument(
        "--text-rounds", type=int, default=None, help="text rounds, median reported (5; 3 --quick)"
    )
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        help=f"sections to run, comma separated or repeated: {', '.join(SECTIONS)}",
    )
    args = parser.parse_args(argv)
    only = [s.strip() for item in args.only for s in item.split(",") if s.strip()]
    unknown = [s for s in only if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s) {unknown}; choose from {', '.join(SECTIONS)}")
    size, repeat, dialects = _common_values(parser, args)
    chunk = args.chunk_kib * 1024
    if chunk < 1 or size * MiB % chunk:
        parser.error("--chunk-kib must be >= 1, the size a multiple of it")
    text_rounds = args.text_rounds if args.text_rounds is not None else (3 if args.quick else 5)
    if args.deltas < 1 or text_rounds < 1:
        parser.error("--deltas and --text-rounds must be >= 1")
    return Options(
        size, chunk, repeat, dialects, only or list(SECTIONS), args.pg_url, args.deltas, text_rounds
    )


def _machine_lines(opts: Options) -> list[str]:
    import psycopg

    lines = [
        f"CPU: {os.cpu_count()} logical cores; load average "
        + ", ".join(f"{x:.2f}" for x in os.getloadavg()),
        f"Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}",
    ]
    if "postgresql" in opts.dialects:
        with psycopg.connect(opts.pg_url, autocommit=True) as conn:
            row = conn.execute("SHOW server_version").fetchone()
            lines.append(f"PostgreSQL {row[0] if row else '?'} at {urlsplit(opts.pg_url).netloc}")
    return lines


def main(argv: list[str] | None = None) -> int:
    if argv is None and len(sys.argv) > 2 and sys.argv[1] == "--worker":
        spec = json.loads(sys.argv[2])
        print(json.dumps(WORKERS[spec["system"]](spec)))
        return 0
    opts = _parse_args(argv)
    for line in _machine_lines(opts):
        print(line)
    if "binary" in opts.only:
        print(
            f"binary setup: {opts.size_mib} MiB per stream in {opts.chunk // 1024} KiB chunks, "
            f"{opts.repeat} round(s) (median reported; RSS+ is the largest); each measured "
            "writer/reader in a fresh subprocess"
        )
    results: list[str] = []
    for name in opts.only:
        run, report = SECTIONS[name]
        print(f"\n== {name} ==")
        rows = run(opts, lambda text: print(text, flush=True))
        results.extend(["", f"== {name}: results ==", *report(rows, opts)])
    print("\n".join(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
