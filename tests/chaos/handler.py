"""The chaos job handler, run by real ``taskdb worker`` processes:
``taskdb worker tests.chaos.handler:handle -q chaos``.

Each run sleeps as its input says, emits its stream events when the job has a
durable stream, records itself in the side table (retrying across a database
restart) and returns :func:`tests.chaos.workload.expected` plus its run token.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import uuid
from typing import Any

import psycopg
from sqlalchemy import make_url

from taskdb import JobContext
from taskdb.streams import TextDelta
from tests.chaos.workload import RUNS_TABLE, expected, stream_texts

_pg: psycopg.AsyncConnection[Any] | None = None


async def _record(job_id: int, attempt: int, worker: str, token: str) -> None:
    """Insert the run's row; a database away (restarting) is waited for, up to 120 s."""
    global _pg
    url = make_url(os.environ["TASKDB_URL"])
    row = (job_id, attempt, worker, token)
    for _ in range(600):
        try:
            if url.get_backend_name() == "sqlite":
                await asyncio.to_thread(_record_sqlite, str(url.database), row)
                return
            if _pg is None or _pg.closed or _pg.broken:
                plain = url.set(drivername="postgresql").render_as_string(hide_password=False)
                _pg = await psycopg.AsyncConnection.connect(plain, autocommit=True)
            await _pg.execute(f"INSERT INTO {RUNS_TABLE} VALUES (%s, %s, %s, %s)", row)
            return
        except (psycopg.Error, sqlite3.Error, OSError):
            _pg = None
            await asyncio.sleep(0.2)
    raise RuntimeError("chaos side table unreachable for 120 s")


def _record_sqlite(path: str, row: tuple[int, int, str, str]) -> None:
    with sqlite3.connect(path, timeout=60) as conn:
        conn.execute(f"INSERT INTO {RUNS_TABLE} VALUES (?, ?, ?, ?)", row)
    conn.close()


async def handle(value: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    job = ctx.job
    token = uuid.uuid4().hex
    if value["kind"] == "stream":
        for text in stream_texts(value["n"]):
            await ctx.emit_stream_event(TextDelta("text", text))
            await asyncio.sleep(value["sleep"] / len(stream_texts(0)))
    else:
        await asyncio.sleep(value["sleep"])
    await _record(job.id, job.attempts, str(job.worker_id), token)
    return {**expected(value), "run": token}
