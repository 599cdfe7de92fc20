"""Result as reference: a job streaming 1 GiB into the blob store, its row, the read back.

For each size (256 MiB and 1 GiB; ``--sizes``) and dialect (a scratch database
each: PostgreSQL ``CREATE DATABASE``, dropped after; an SQLite file in a
temporary directory), each round:

1. **Raw writes** of the bytes in 1 MiB chunks on the bare driver, each in a
   fresh subprocess, one transaction each. PostgreSQL, every path a careful
   engineer might pick: ``lo_create`` + ``lo_put`` per chunk; ``lo_open`` +
   ``lowrite`` per chunk on the open descriptor (prepared); 1 MiB bytea rows
   through ``COPY .. FROM STDIN (FORMAT BINARY)`` into a scratch table. SQLite:
   ``sqlite3`` chunk-row INSERTs in WAL mode.
2. **The job**: a worker subprocess runs a ``JobQueueServer`` whose handler
   returns ``{"data": <async iterator of the same 1 MiB chunks>}``; the server
   streams it into the blob store and the job row keeps a ``CacheRef``. After
   an untimed warm-up job (4 MiB, same path), the worker resets its peak-RSS
   mark and submits the job through a ``JobQueueClient`` on the same database
   (so ``wait()`` wakes as soon as the server has recorded the outcome).
   **Job time = from the handler's start to ``wait()`` returning the
   COMPLETED row**: streaming, the link of the ref to the job and the commit
   of the outcome all count. Worker RSS growth = peak (``VmHWM``) during the
   job minus RSS before it.
3. **Job row**: the bytes of ``taskdb_jobs.output`` as stored (JSON text).
4. **Read back in another process**: a fresh subprocess streams the bytes of
   the ref through ``SqlTaskOutputRepository(db).get_output_stream_by_ref``,
   against each raw path reading what it wrote, in a fresh subprocess, results
   in binary format (the text format sends bytea hex-escaped, twice the bytes):
   ``lo_get`` per 1 MiB; ``loread`` per 1 MiB on an open descriptor; ``COPY
   (SELECT ..) TO STDOUT (FORMAT BINARY)``; SQLite one SELECT over the chunk rows.

Writers and readers alternate going first from round to round. Before every
measured write or read the database is checkpointed. MB/s counts 10^6 bytes;
every round counts (the median of all rounds is judged, each round is shown).
Targets (PASS/MISS): job >= 0.8x the best raw write and read back >= 0.8x the
best raw read, at each size; worker RSS growth < 64 MiB; job row < 1 KiB.

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


def _worker_lo(spec: dict[str, Any]) -> dict[str, Any]:
    """A large object on one open descriptor: ``lowrite`` each chunk / ``loread`` each
    chunk with binary-format results, one transaction, prepared statements."""
    import psycopg

    with psycopg.connect(spec["url"]) as conn, conn.cursor(binary=True) as cur:
        cur.execute("SELECT 1").fetchone()
        conn.commit()
        chunk = spec["chunk"]
        if spec["op"] == "write":

            def write() -> dict[str, Any]:
                row = cur.execute("SELECT lo_create(0)").fetchone()
                assert row is not None
                oid, total = int(row[0]), 0
                fd = cur.execute("SELECT lo_open(%s, 131072)", (oid,)).fetchone()[0]  # INV_WRITE
                for data in _chunks_sync(spec["count"], chunk):
                    cur.execute("SELECT lowrite(%s, %s)", (fd, data), prepare=True)
                    total += len(data)
                conn.commit()
                return {"key": oid, "bytes": total}

            timed = _timed(write)
        else:
            oid = int(spec["key"])

            def read() -> dict[str, Any]:
                fd = cur.execute("SELECT lo_open(%s, 262144)", (oid,)).fetchone()[0]  # INV_READ
                total = 0
                while True:
                    data = cur.execute("SELECT loread(%s, %s)", (fd, chunk), prepare=True)
                    got = len(data.fetchone()[0])
                    total += got
                    if got < chunk:
                        break
                conn.commit()
                return {"bytes": total}

            timed = _timed(read)
    return {"seconds": timed["seconds"], "rss_growth": timed["rss_growth"], **timed["result"]}


def _worker_copy(spec: dict[str, Any]) -> dict[str, Any]:
    """The same chunks as rows of a scratch bytea table through binary COPY, in and out
    (the text format sends bytea hex-escaped, twice the bytes)."""
    import psycopg

    with psycopg.connect(spec["url"]) as conn:
        if spec["op"] == "write":
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
                return {"bytes": total, "key": COPY_TABLE}

            timed = _timed(write)
        else:

            def read() -> dict[str, Any]:
                total = 0
                sql = f"COPY (SELECT data FROM {COPY_TABLE} ORDER BY seq) TO STDOUT (FORMAT BINARY)"
                with conn.cursor() as cur, cur.copy(sql) as copy:
                    copy.set_types(["bytea"])
                    for (data,) in copy.rows():
                        total += len(data)
                conn.commit()
                return {"bytes": total}

            timed = _timed(read)
    return {"seconds": timed["seconds"], "rss_growth": timed["rss_growth"], **timed["result"]}


ALL_WORKERS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    **WORKERS,
    "job": _worker_job,
    "lo-postgresql": _worker_lo,
    "copy-postgresql": _worker_copy,
}


def _run(spec: dict[str, Any]) -> dict[str, Any]:
    return _run_worker(spec, script=__file__)


# ---------------------------------------------------------------------------------------
# The parent
# ---------------------------------------------------------------------------------------


@dataclasses.dataclass
class Result:
    """One dialect's rounds at one size."""

    dialect: str
    size_mib: int
    samples: dict[str, list[dict[str, Any]]] = dataclasses.field(default_factory=dict)
    row_bytes: int = 0
    row_json: str = ""

    def add(self, name: str, sample: dict[str, Any]) -> None:
        self.samples.setdefault(name, []).append(sample)

    def mbps(self, name: str) -> float:
        return statistics.median(_mbps(s) for s in self.samples[name])

    def spread(self, name: str) -> str:
        """Every round's MB/s of ``name``."""
        return " ".join(f"{_mbps(s):.0f}" for s in self.samples[name])

    def rss_mib(self, name: str) -> float:
        return max(s["rss_growth"] for s in self.samples[name]) / MiB

    def best(self, op: str) -> str:
        """The raw path with the highest median MB/s for ``op`` (write/read)."""
        names = [n for n in self.samples if n.startswith("raw ") and n.endswith(" " + op)]
        return max(names, key=self.mbps)


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


def _raw_paths(dialect: str, url: str, base: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The raw writers of a dialect by name (each also reads back what it wrote)."""
    plain = _plain(url)
    if dialect == "sqlite":
        path = url.removeprefix("sqlite:///")
        return {"chunk rows": {**base, "system": "raw-sqlite", "url": plain, "path": path}}
    return {
        "lo_put/lo_get": {**base, "system": "raw-postgresql", "url": plain},
        "lo fd": {**base, "system": "lo-postgresql", "url": plain},
        "bytea COPY": {**base, "system": "copy-postgresql", "url": plain},
    }


def _dialect(opts: Options, dialect: str, size_mib: int, say: Callable[[str], None]) -> Result:
    import taskdb

    count = size_mib * MiB // opts.chunk
    pg = dialect == "postgresql"
    scratch = _scratch_pg(opts.pg_url, "blobrefs") if pg else _scratch_sqlite()
    out = Result(dialect, size_mib)
    with scratch as url:
        taskdb.connect(url).migrate()
        base: dict[str, Any] = {"count": count, "chunk": opts.chunk}
        raws = _raw_paths(dialect, url, base)
        job = {**base, "system": "job", "op": "write", "url": url}
        reader = {**base, "system": "taskdb", "op": "read", "url": url}
        if pg:
            import psycopg

            with psycopg.connect(_plain(url), autocommit=True) as conn:
                conn.execute(f"CREATE TABLE {COPY_TABLE} (seq int PRIMARY KEY, data bytea)")
        for rep in range(opts.repeat):
            suffix = f" (round {rep + 1}/{opts.repeat})" if opts.repeat > 1 else ""
            say(f"{dialect}: {size_mib} MiB{suffix} ...")
            writes = [({**spec, "op": "write"}, f"raw {name} write") for name, spec in raws.items()]
            writes.append((job, "job"))
            if rep % 2:  # alternate who goes first
                writes.reverse()
            done = {name: _run(spec) for spec, name in writes}
            ref = done["job"]["ref"]
            out.row_bytes, out.row_json = _job_row(url, done["job"]["job_id"])
            reads = [
                (
                    {**spec, "op": "read", "key": done[f"raw {name} write"]["key"]},
                    f"raw {name} read",
                )
                for name, spec in raws.items()
            ]
            reads.append(({**reader, "key": ref["$ref"], "ref": ref}, "read back"))
            if rep % 2:
                reads.reverse()
            done.update({name: _run(spec) for spec, name in reads})
            for name, sample in done.items():
                out.add(name, sample)
            line = ", ".join(f"{name} {_mbps(s):.0f}" for name, s in done.items())
            say(f"  MB/s: {line}; job RSS+ {done['job']['rss_growth'] / MiB:.1f} MiB")
            _purge_jobs(url)
            for name in raws:
                if name != "bytea COPY":
                    _drop_blobs(url, done[f"raw {name} write"]["key"])
    return out


def _say(text: str) -> None:
    print(text, flush=True)


def _mark(good: bool) -> str:
    return "PASS" if good else "MISS"


def _report(results: list[Result]) -> tuple[list[str], list[str]]:
    """The table (every round's MB/s, the median) and the PASS/MISS target lines."""
    header = f"{'dialect':<11} {'size':>8} {'path':<22} {'median MB/s':>11}  each round"
    lines, targets = [header, "-" * len(header)], []
    for r in results:
        size = f"{r.size_mib} MiB"
        for name in r.samples:
            shown = "job (taskdb write)" if name == "job" else name
            lines.append(
                f"{r.dialect:<11} {size:>8} {shown:<22} {r.mbps(name):>11.1f}  {r.spread(name)}"
            )
        for op, ours in (("write", "job"), ("read", "read back")):
            best = r.best(op)
            ratio = r.mbps(ours) / r.mbps(best)
            targets.append(
                f"{_mark(ratio >= WRITE_TARGET)} {r.dialect} {size} {op}: {ratio:.2f}x the best "
                f"raw path ({best}: {r.mbps(ours):.0f} vs {r.mbps(best):.0f} MB/s; "
                f"need >= {WRITE_TARGET}x)"
            )
        rss = r.rss_mib("job")
        targets.append(
            f"{_mark(rss < RSS_TARGET_MIB)} {r.dialect} {size} worker RSS growth: {rss:.1f} MiB "
            f"(largest of the rounds; need < {RSS_TARGET_MIB} MiB)"
        )
        targets.append(
            f"{_mark(r.row_bytes < ROW_TARGET)} {r.dialect} {size} job row output JSON: "
            f"{r.row_bytes} B (need < {ROW_TARGET} B)"
        )
        submit = statistics.median(s["submit_seconds"] for s in r.samples["job"])
        handler = statistics.median(s["seconds"] for s in r.samples["job"])
        lines.append(
            f"{'':<11} {'':>8} (job: handler start -> COMPLETED row {handler:.2f} s; "
            f"submit -> COMPLETED {submit:.2f} s)"
        )
    lines.append("")
    for r in results[-2:]:
        lines.append(f"{r.dialect} job row output ({r.row_bytes} bytes): {r.row_json}")
    return lines, targets


def _parse_args(argv: list[str] | None) -> tuple[Options, list[int]]:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    _add_common_args(parser, "one round")
    parser.add_argument(
        "--sizes", default=None, help="MiB per job, comma separated (256,1024; 64 with --quick)"
    )
    args = parser.parse_args(argv)
    size, repeat, dialects = _common_values(parser, args)
    if args.sizes is not None:
        sizes = [int(x) for x in args.sizes.split(",") if x.strip()]
    elif args.size_mib != 1024:
        sizes = [args.size_mib]
    else:
        sizes = [64] if args.quick else [256, 1024]
    if not sizes or min(sizes) < 1:
        parser.error("--sizes takes MiB counts >= 1")
    return Options(size, MiB, repeat, dialects, [], args.pg_url), sizes  # no sections here


def main(argv: list[str] | None = None) -> int:
    if argv is None and len(sys.argv) > 2 and sys.argv[1] == "--worker":
        spec = json.loads(sys.argv[2])
        print(json.dumps(ALL_WORKERS[spec["system"]](spec)))
        return 0
    opts, sizes = _parse_args(argv)
    started = time.monotonic()
    for line in _machine_lines(opts):
        print(line)
    versions = ", ".join(f"{p} {metadata.version(p)}" for p in ("taskdb", "psycopg", "sqlalchemy"))
    print(versions)
    print(
        f"setup: a job output of {', '.join(f'{s} MiB' for s in sizes)} in "
        f"{opts.chunk // MiB} MiB chunks, {opts.repeat} round(s) each (median MB/s of all "
        "rounds; RSS+ is the largest); every writer and reader in a fresh subprocess"
    )
    results = [_dialect(opts, d, size, _say) for size in sizes for d in opts.dialects]
    lines, targets = _report(results)
    print("\n== results ==")
    print("\n".join(lines))
    print("\n== targets (medians of all rounds) ==")
    print("\n".join(targets))
    print(
        f"\ntook {time.monotonic() - started:.0f} s; load average now "
        + ", ".join(f"{x:.2f}" for x in os.getloadavg())
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
