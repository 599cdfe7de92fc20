"""Result as reference: a job streaming 1 GiB into the blob store, its row, the read back.

For each dialect (a scratch database each: PostgreSQL ``CREATE DATABASE``,
dropped after; an SQLite file in a temporary directory), each round:

1. **Raw write** of N MiB in 1 MiB chunks on the bare driver, in a fresh
   subprocess (PostgreSQL: ``lo_create`` + ``lo_put`` per chunk on a plain
   psycopg connection, one transaction; SQLite: ``sqlite3`` chunk-row INSERTs in
   WAL mode, one transaction) — the writers of ``stream_throughput.py``.
2. **The job**: a worker subprocess runs a ``JobQueueServer`` whose handler
   returns ``{"data": <async iterator of the same 1 MiB chunks>}``; the server
   streams it into the blob store and the job row keeps a ``CacheRef``. After
   an untimed warm-up job (4 MiB, same path), the worker resets its peak-RSS
   mark and submits the job through a ``JobQueueClient`` on the same database
   (so ``wait()`` wakes as soon as the server has recorded the outcome).
   **Job time = from the handler's start to ``wait()`` returning the
   COMPLETED row**: streaming, the link of the ref to the job and the commit
   of the outcome all count. Raw write and job alternate going first.
   Worker RSS growth = peak (``VmHWM``) during the job minus RSS before it.
3. **Job row**: the bytes of ``taskdb_jobs.output`` as stored (JSON text),
   read by this process with the bare driver; the row is printed.
4. **Read back in another process**: a fresh subprocess streams the bytes of
   the ref (taken from the row as JSON) through
   ``SqlTaskOutputRepository(db).get_output_stream_by_ref(ref)``, against a
   raw read of the raw-written bytes (``lo_get`` per 1 MiB / one SELECT over
   the chunk rows), each in a fresh subprocess.
5. PostgreSQL only, for information: the same bytes as 1 MiB rows through
   ``COPY t (seq, data) FROM STDIN (FORMAT BINARY)`` (psycopg ``cursor.copy``)
   into a scratch table, one transaction. Binary format: the text format
   sends bytea hex-escaped (twice the bytes) and measured about half as fast.

Before every measured write or read the database is checkpointed. MB/s counts
10^6 bytes. Targets: job >= 0.8x raw write; read back >= 0.8x raw read;
worker RSS growth < 64 MiB; job row < 1 KiB. The cache-row case (a task output
saved with a ref) is covered by ``stream_throughput.py``.

Run ``python benchmarks/blob_refs.py --help`` for the flags.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import sqlite3
import statistics
import sys
import time
from collections.abc import Callable
from importlib import metadata
from typing import Any

from queue_throughput import _scratch_pg, _scratch_sqlite
from stream_throughput import (
    RSS_TARGET_MIB,
    WORKERS,
    MiB,
    Options,
    _add_common_args,
    _chunks,
    _chunks_sync,
    _common_values,
    _drop_blobs,
    _machine_lines,
    _mbps,
    _plain,
    _reset_peak,
    _rss,
    _run_worker,
    _timed,
)

# Only the standard library (and the two benchmark modules above, which import
# nothing else at module level): each measured subprocess loads only what it measures.

QUEUE = "blobs"
WRITE_TARGET = 0.8  # job / raw write
READ_TARGET = 0.8  # read back / raw read
ROW_TARGET = 1024  # bytes of the job row's output JSON
WARMUP_CHUNKS = 4
COPY_TABLE = "bench_copy"


# ---------------------------------------------------------------------------------------
# Measured subprocesses (stream_throughput's raw writers/readers and taskdb reader, plus)
# ---------------------------------------------------------------------------------------


def _worker_job(spec: dict[str, Any]) -> dict[str, Any]:
    """A worker process: a JobQueueServer whose handler streams ``count`` chunks."""
    import taskdb
    from taskdb import JobContext, JobQueueClient, JobQueueServer

    chunk = spec["chunk"]
    started: dict[int, float] = {}

    async def handler(job_input: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
        started[ctx.job.id] = time.perf_counter()
        return {"data": _chunks(job_input["count"], chunk)}

    async def main() -> dict[str, Any]:
        async with taskdb.connect(spec["url"]) as db:
            server = JobQueueServer(db, QUEUE, handler, poll_interval=0.05)
            client = JobQueueClient(db, QUEUE)
            async with server:
                await (await client.submit({"count": WARMUP_CHUNKS})).wait()  # untimed
                baseline = _reset_peak()
                submitted = time.perf_counter()
                handle = await client.submit({"count": spec["count"]})
                output = await handle.wait()
                done = time.perf_counter()
                rss_growth = _rss("VmHWM") - baseline
        ref = output["data"]
        return {
            "seconds": done - started[handle.id],
            "submit_seconds": done - submitted,
            "rss_growth": rss_growth,
            "bytes": ref["size"],
            "job_id": handle.id,
            "ref": ref,
        }

    return asyncio.run(main())


def _worker_copy(spec: dict[str, Any]) -> dict[str, Any]:
    """The same chunks as rows of a scratch bytea table through binary COPY."""
    import psycopg

    with psycopg.connect(spec["url"]) as conn:
        conn.execute(f"TRUNCATE {COPY_TABLE}")
        conn.commit()

        def write() -> dict[str, Any]:
            total = 0
            with (
                conn.cursor() as cur,
                cur.copy(f"COPY {COPY_TABLE} (seq, data) FROM STDIN (FORMAT BINARY)") as copy,
            ):
                copy.set_types(["int4", "bytea"])
                for seq, data in enumerate(_chunks_sync(spec["count"], spec["chunk"])):
                    copy.write_row((seq, data))
                    total += len(data)
            conn.commit()
            return {"bytes": total}

        timed = _timed(write)
        conn.execute(f"TRUNCATE {COPY_TABLE}")
        conn.commit()
    return {"seconds": timed["seconds"], "rss_growth": timed["rss_growth"], **timed["result"]}


ALL_WORKERS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    **WORKERS,
    "job": _worker_job,
    "copy-postgresql": _worker_copy,
}


def _run(spec: dict[str, Any]) -> dict[str, Any]:
    return _run_worker(spec, script=__file__)


# ---------------------------------------------------------------------------------------
# The parent
# ---------------------------------------------------------------------------------------


@dataclasses.dataclass
class Result:
    """One dialect's rounds."""

    dialect: str
    samples: dict[str, list[dict[str, Any]]] = dataclasses.field(default_factory=dict)
    row_bytes: int = 0
    row_json: str = ""

    def add(self, name: str, sample: dict[str, Any]) -> None:
        self.samples.setdefault(name, []).append(sample)

    def mbps(self, name: str) -> float:
        return statistics.median(_mbps(s) for s in self.samples[name])

    def rss_mib(self, name: str) -> float:
        return max(s["rss_growth"] for s in self.samples[name]) / MiB


def _job_row(url: str, job_id: int) -> tuple[int, str]:
    """(bytes, text) of the job row's output JSON as the database stores it."""
    if url.startswith("postgresql"):
        import psycopg

        with psycopg.connect(_plain(url)) as conn:
            sql = "SELECT octet_length(output::text), output::text FROM taskdb_jobs WHERE id = %s"
            row = conn.execute(sql, (job_id,)).fetchone()
    else:
        with contextlib.closing(sqlite3.connect(url.removeprefix("sqlite:///"))) as conn:
            sql = "SELECT length(CAST(output AS BLOB)), output FROM taskdb_jobs WHERE id = ?"
            row = conn.execute(sql, (job_id,)).fetchone()
    assert row is not None, f"job {job_id} not found"
    return int(row[0]), str(row[1])


def _purge_jobs(url: str) -> None:
    """Delete the round's ended jobs (their blobs go with them)."""
    from datetime import timedelta

    import taskdb

    async def purge() -> None:
        async with taskdb.connect(url) as db:
            await taskdb.JobQueueClient(db, QUEUE).purge(timedelta(0))

    asyncio.run(purge())


def _dialect(opts: Options, dialect: str, say: Callable[[str], None]) -> Result:
    import taskdb

    count = opts.size_mib * MiB // opts.chunk
    pg = dialect == "postgresql"
    scratch = _scratch_pg(opts.pg_url, "blobrefs") if pg else _scratch_sqlite()
    out = Result(dialect)
    with scratch as url:
        taskdb.connect(url).migrate()
        base: dict[str, Any] = {"count": count, "chunk": opts.chunk}
        raw = {**base, "system": f"raw-{dialect}", "url": _plain(url)}
        raw["path"] = url.removeprefix("sqlite:///")
        job = {**base, "system": "job", "op": "write", "url": url}
        reader = {**base, "system": "taskdb", "op": "read", "url": url}
        if pg:
            import psycopg

            with psycopg.connect(_plain(url), autocommit=True) as conn:
                conn.execute(f"CREATE TABLE {COPY_TABLE} (seq int PRIMARY KEY, data bytea)")
        for rep in range(opts.repeat):
            suffix = f" (round {rep + 1}/{opts.repeat})" if opts.repeat > 1 else ""
            say(f"{dialect}: {opts.size_mib} MiB{suffix} ...")
            firsts = [({**raw, "op": "write"}, "raw write"), (job, "job")]
            if rep % 2:
                firsts.reverse()
            done = {name: _run(spec) for spec, name in firsts}
            raw_key, ref = done["raw write"]["key"], done["job"]["ref"]
            out.row_bytes, out.row_json = _job_row(url, done["job"]["job_id"])
            reads = [
                ({**raw, "op": "read", "key": raw_key}, "raw read"),
                ({**reader, "key": ref["$ref"], "ref": ref}, "read back"),
            ]
            if rep % 2:
                reads.reverse()
            done.update({name: _run(spec) for spec, name in reads})
            if pg:
                done["copy"] = _run({**base, "system": "copy-postgresql", "url": _plain(url)})
            for name, sample in done.items():
                out.add(name, sample)
            line = ", ".join(f"{name} {_mbps(s):.0f}" for name, s in done.items())
            say(f"  MB/s: {line}; job RSS+ {done['job']['rss_growth'] / MiB:.1f} MiB")
            _purge_jobs(url)
            _drop_blobs(url, raw_key)
    return out


def _say(text: str) -> None:
    print(text, flush=True)


def _verdict(good: bool, target: str) -> str:
    return f"{'ok' if good else 'MISSED'} ({target})"


def _report(results: list[Result], opts: Options) -> list[str]:
    size = f"{opts.size_mib} MiB" if opts.size_mib < 1024 else f"{opts.size_mib / 1024:g} GiB"
    header = (
        f"{'dialect':<11} {'measure':<36} {'taskdb':>12} {'baseline':>16} {'ratio':>6}  verdict"
    )
    lines = [header, "-" * len(header)]
    for r in results:
        job, raw_w = r.mbps("job"), r.mbps("raw write")
        back, raw_r = r.mbps("read back"), r.mbps("raw read")
        raw_rss = r.rss_mib("raw write")
        rows = [
            (
                f"write {size} through a job",
                f"{job:.1f} MB/s",
                f"raw {raw_w:.1f} MB/s",
                f"{job / raw_w:.2f}x",
                _verdict(job / raw_w >= WRITE_TARGET, f">= {WRITE_TARGET}x raw"),
            ),
            (
                "worker peak RSS growth",
                f"{r.rss_mib('job'):.1f} MiB",
                f"raw {raw_rss:.1f} MiB",
                "",
                _verdict(r.rss_mib("job") < RSS_TARGET_MIB, f"< {RSS_TARGET_MIB} MiB"),
            ),
            (
                "job row output JSON",
                f"{r.row_bytes} B",
                "",
                "",
                _verdict(r.row_bytes < ROW_TARGET, f"< {ROW_TARGET} B"),
            ),
            (
                "read back in another process",
                f"{back:.1f} MB/s",
                f"raw {raw_r:.1f} MB/s",
                f"{back / raw_r:.2f}x",
                _verdict(back / raw_r >= READ_TARGET, f">= {READ_TARGET}x raw"),
            ),
        ]
        if "copy" in r.samples:
            copy = r.mbps("copy")
            rows.append(
                (
                    "bytea COPY (info: vs large objects)",
                    f"{copy:.1f} MB/s",
                    f"lo {raw_w:.1f} MB/s",
                    f"{copy / raw_w:.2f}x",
                    "info",
                )
            )
        for measure, ours, baseline, ratio, verdict in rows:
            lines.append(
                f"{r.dialect:<11} {measure:<36} {ours:>12} {baseline:>16} {ratio:>6}  {verdict}"
            )
        submit = statistics.median(s["submit_seconds"] for s in r.samples["job"])
        handler = statistics.median(s["seconds"] for s in r.samples["job"])
        lines.append(
            f"{'':<11} (job: handler start -> COMPLETED row {handler:.2f} s; "
            f"submit -> COMPLETED {submit:.2f} s)"
        )
    lines.append("")
    for r in results:
        lines.append(f"{r.dialect} job row output ({r.row_bytes} bytes): {r.row_json}")
    return lines


def _parse_args(argv: list[str] | None) -> Options:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    _add_common_args(parser, "one round")
    args = parser.parse_args(argv)
    size, repeat, dialects = _common_values(parser, args)
    return Options(size, MiB, repeat, dialects, [], args.pg_url)  # no sections here


def main(argv: list[str] | None = None) -> int:
    if argv is None and len(sys.argv) > 2 and sys.argv[1] == "--worker":
        spec = json.loads(sys.argv[2])
        print(json.dumps(ALL_WORKERS[spec["system"]](spec)))
        return 0
    opts = _parse_args(argv)
    started = time.monotonic()
    for line in _machine_lines(opts):
        print(line)
    versions = ", ".join(f"{p} {metadata.version(p)}" for p in ("taskdb", "psycopg", "sqlalchemy"))
    print(versions)
    print(
        f"setup: a {opts.size_mib} MiB job output in {opts.chunk // MiB} MiB chunks, "
        f"{opts.repeat} round(s) (median MB/s; RSS+ is the largest); every writer and "
        "reader in a fresh subprocess"
    )
    results = [_dialect(opts, d, _say) for d in opts.dialects]
    print("\n== results ==")
    print("\n".join(_report(results, opts)))
    print(
        f"\ntook {time.monotonic() - started:.0f} s; load average now "
        + ", ".join(f"{x:.2f}" for x in os.getloadavg())
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
